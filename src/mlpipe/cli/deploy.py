"""``mlpipe deploy ...`` (the Prefect deployments, their triggers, the Kubernetes manifests) and
``mlpipe backfill``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from mlpipe.cli import render
from mlpipe.cli.common import Verbose, settings, user_errors
from mlpipe.deploy.deployments import DEPLOYMENT_NAME
from mlpipe.deploy.triggers import RETRAIN_CRON, SENSOR_POLL_SECONDS, SENSOR_WINDOW_SECONDS
from mlpipe.errors import UserError
from mlpipe.settings import DEFAULT_INPUT_ROOT, DEFAULT_MODEL_URI, DEFAULT_OUTPUT_ROOT, DEFAULT_POOL

app = typer.Typer(
    rich_markup_mode="markdown",  # a docstring's line breaks join into one paragraph
    help="Create mlpipe's Prefect deployments (tune/mlpipe, batch_score/mlpipe) and render its "
    "Kubernetes manifests.",
    no_args_is_help=True,
)

FlowsOption = Annotated[
    list[str] | None,
    typer.Option("--flow", help="tune and/or batch_score (repeat); default: both."),
]

CronOption = Annotated[
    list[str] | None,
    typer.Option("--cron", help="FLOW=CRON, e.g. 'batch_score=0 6 * * *' (UTC); repeat per flow."),
]

IntervalOption = Annotated[
    list[str] | None,
    typer.Option("--interval", help="FLOW=SECONDS, e.g. tune=604800; repeat per flow."),
]

ModelOption = Annotated[str, typer.Option(help="batch_score's model URI.")]

InputRootOption = Annotated[
    str, typer.Option(help="batch_score reads INPUT_ROOT/PARTITION/ (a folder or s3://B/PREFIX).")
]

OutputRootOption = Annotated[
    str,
    typer.Option(
        help="batch_score writes OUTPUT_ROOT/PARTITION/predictions.parquet (a folder or s3://...)."
    ),
]

SpecOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="tune's spec file; default: built-in.")
]

WebhookOption = Annotated[
    str | None,
    typer.Option(
        help="call this URL (a Prefect automation) when a run of these deployments fails."
    ),
]
NameOption = Annotated[
    str, typer.Option("--name", help="the deployments' name: each flow's is FLOW/NAME.")
]


@app.command("apply")
@user_errors
def deploy_apply(
    flows: FlowsOption = None,
    cron: CronOption = None,
    interval: IntervalOption = None,
    model: ModelOption = DEFAULT_MODEL_URI,
    input_root: InputRootOption = str(DEFAULT_INPUT_ROOT),
    output_root: OutputRootOption = str(DEFAULT_OUTPUT_ROOT),
    config: SpecOption = None,
    notify_webhook: WebhookOption = None,
    pool: Annotated[
        str | None,
        typer.Option(help="the work pool (created if missing); default: mlpipe-POOL_TYPE."),
    ] = None,
    pool_type: Annotated[str, typer.Option(help="process | docker | kubernetes.")] = "process",
    working_dir: Annotated[
        Path | None,
        typer.Option(help="process and docker pools: where runs start; default: here."),
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="docker and kubernetes: the mlpipe image.")
    ] = None,
    namespace: Annotated[str, typer.Option(help="kubernetes: the namespace.")] = "default",
    cpu_request: Annotated[str | None, typer.Option(help="kubernetes, e.g. 500m.")] = None,
    cpu_limit: Annotated[str | None, typer.Option(help="kubernetes, e.g. 2.")] = None,
    memory_request: Annotated[str | None, typer.Option(help="kubernetes, e.g. 1Gi.")] = None,
    memory_limit: Annotated[str | None, typer.Option(help="kubernetes, e.g. 4Gi.")] = None,
    deployment_name: NameOption = DEPLOYMENT_NAME,
    verbose: Verbose = False,
) -> None:
    """Register the deployments on a work pool; a worker of that pool runs them
    (prefect worker start --pool mlpipe-process)."""
    from mlpipe.deploy import deployments
    from mlpipe.deploy.deployments import KubernetesJob, docker_container

    if pool_type not in deployments.POOL_TYPES:
        raise UserError(
            f"--pool-type {pool_type!r}: expected one of {', '.join(deployments.POOL_TYPES)}"
        )
    if pool_type != "process" and not image:
        raise UserError(f"--pool-type {pool_type} needs --image (the mlpipe image to run)")
    _prefect_server("mlpipe deploy apply")
    pool = pool or f"mlpipe-{pool_type}"  # mlpipe-process: DEFAULT_POOL, `mlpipe up`'s worker's
    workdir = (working_dir or Path.cwd()).resolve()
    kubernetes = docker = None
    if pool_type == "kubernetes" and image:
        kubernetes = KubernetesJob(
            image, namespace, cpu_request, cpu_limit, memory_request, memory_limit
        )
    if pool_type == "docker" and image:
        from mlpipe.deploy.images import check_image

        typer.echo(f"image {image} ({check_image(image)})")
        docker = docker_container(image, workdir, input_root, output_root, settings().tracking_uri)
    chosen = _settings(
        flows, cron, interval, model, input_root, output_root, config,
        pool=pool, kubernetes=kubernetes, docker=docker, name=deployment_name,
        working_dir=workdir if pool_type == "process" else None,
    )  # fmt: skip
    typer.echo(deployments.ensure_pool(pool, pool_type))
    created, notes = deployments.apply(chosen)
    for name, deployment_id in created:
        typer.echo(f"deployment {name} ({deployment_id}) on pool {pool!r}")
    for note in notes:
        typer.echo(note)
    if notify_webhook:
        _notify(notify_webhook, [i for _, i in created], deployment_name)
    if pool_type != "kubernetes":
        typer.echo(f"start a worker: prefect worker start --pool {pool} --type {pool_type}")
    typer.echo(
        f"run one now: prefect deployment run batch_score/{deployment_name} "
        "-p partition=date=2026-11-22"
    )


@app.command("triggers")
@user_errors
def deploy_triggers(
    model: ModelOption = DEFAULT_MODEL_URI,
    input_root: InputRootOption = str(DEFAULT_INPUT_ROOT),
    output_root: OutputRootOption = str(DEFAULT_OUTPUT_ROOT),
    config: SpecOption = None,
    pool: Annotated[
        str, typer.Option(help="the process work pool (created if missing).")
    ] = DEFAULT_POOL,
    working_dir: Annotated[
        Path | None, typer.Option(help="where runs start; default: here.")
    ] = None,
    sensor_interval: Annotated[
        float, typer.Option(help="seconds between two looks at INPUT_ROOT.")
    ] = SENSOR_POLL_SECONDS,
    sensor_window: Annotated[
        float, typer.Option(help="seconds one sensor run watches; a run starts every window.")
    ] = SENSOR_WINDOW_SECONDS,
    retrain_cron: Annotated[
        str, typer.Option(help="tune/mlpipe's schedule (UTC); default Mondays 03:00.")
    ] = RETRAIN_CRON,
    notify_webhook: Annotated[
        str | None, typer.Option(help="call this URL on mlpipe.drift.detected.")
    ] = None,
    retrain_on_drift: Annotated[
        bool, typer.Option(help="also run tune/mlpipe on mlpipe.drift.detected.")
    ] = False,
    deployment_name: NameOption = DEPLOYMENT_NAME,
    verbose: Verbose = False,
) -> None:
    """Event-driven runs: a new partition is scored when it lands, a new champion re-scores the
    latest partition, tune runs weekly, and drift calls a webhook (and can retrain)."""
    from mlpipe.deploy import deployments, triggers
    from mlpipe.predictor import parse_model_uri

    name = parse_model_uri(model).name
    if name is None:
        raise UserError(f"--model {model}: triggers follow a registered model (models:/NAME@ALIAS)")
    if retrain_on_drift and not notify_webhook:
        raise UserError("--retrain-on-drift rides on the drift automation: give --notify-webhook")
    sensor = triggers.sensor_parameters(sensor_interval, sensor_window)
    _prefect_server("mlpipe deploy triggers")
    settings = _settings(
        list(deployments.FLOW_ENTRYPOINTS), [f"tune={retrain_cron}"],
        [f"watch_incoming={sensor_window}"], model, input_root, output_root, config,
        pool=pool, working_dir=(working_dir or Path.cwd()).resolve(), name=deployment_name,
    )  # fmt: skip
    settings.parameters["watch_incoming"] |= sensor
    settings.triggers["batch_score"] = triggers.batch_score_triggers(name)
    typer.echo(deployments.ensure_pool(pool, "process"))
    applied, notes = deployments.apply(settings)
    created = dict(applied)
    for full_name, deployment_id in created.items():
        typer.echo(f"deployment {full_name} ({deployment_id}) on pool {pool!r}")
    for note in notes:
        typer.echo(note)
    typer.echo(
        f"triggers: {triggers.DATA_ARRIVED} -> batch_score(partition); "
        f"{triggers.MODEL_PROMOTED} of {name} -> batch_score(latest, new version); "
        f"tune every '{retrain_cron}'; watch_incoming looks every {sensor_interval:g}s "
        f"(one run every {sensor_window:g}s)"
    )
    typer.echo(triggers.start_sensor(created[f"watch_incoming/{deployment_name}"]))
    if notify_webhook:
        retrain = created[f"tune/{deployment_name}"] if retrain_on_drift else None
        automation_id = triggers.notify_on_drift(notify_webhook, retrain, deployment_name)
        typer.echo(
            f"automation {triggers.DRIFT_AUTOMATION.format(name=deployment_name)!r} "
            f"({automation_id}): "
            f"{triggers.DRIFT_DETECTED} calls {notify_webhook}"
            + (f" and runs tune/{deployment_name}" if retrain else "")
        )
    typer.echo(f"start a worker: prefect worker start --pool {pool} --type process")


@app.command("serve")
@user_errors
def deploy_serve(
    flows: FlowsOption = None,
    cron: CronOption = None,
    interval: IntervalOption = None,
    model: ModelOption = DEFAULT_MODEL_URI,
    input_root: InputRootOption = str(DEFAULT_INPUT_ROOT),
    output_root: OutputRootOption = str(DEFAULT_OUTPUT_ROOT),
    config: SpecOption = None,
    notify_webhook: WebhookOption = None,
    limit: Annotated[
        int | None, typer.Option(help="flow runs at once (default: no limit).")
    ] = None,
    deployment_name: NameOption = DEPLOYMENT_NAME,
    verbose: Verbose = False,
) -> None:
    """Serve the deployments from this process (static infrastructure) until Ctrl-C."""
    from mlpipe.deploy import deployments

    settings = _settings(
        flows, cron, interval, model, input_root, output_root, config, name=deployment_name
    )
    if notify_webhook:  # the automation needs the deployments' ids before serving
        ids = [str(d.apply()) for d in deployments.build(settings, False)]
        _notify(notify_webhook, ids, deployment_name)
    deployments.serve(settings, limit=limit)


@app.command("k8s")
@user_errors
def deploy_k8s(
    image: Annotated[
        str, typer.Option(help="the mlpipe image every pod runs, e.g. REGISTRY/mlpipe:0.1.0.")
    ],
    overlay: Annotated[
        str, typer.Option(help="local (kind, minikube) | gke | aws (EKS, artifacts on S3).")
    ] = "local",
    config: SpecOption = None,
    shards: Annotated[int, typer.Option(help="shards of the tuning search (Indexed Job).")] = 4,
    parallelism: Annotated[
        int | None, typer.Option(help="shard pods at once; default: the overlay's.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write the YAML here, not stdout.")
    ] = None,
    do_apply: Annotated[
        bool, typer.Option("--apply", help="kubectl apply it (the current kubectl context).")
    ] = False,
    artifacts: Annotated[
        str | None,
        typer.Option(help="MLflow's artifact store, s3://BUCKET/PREFIX (proxied by MLflow)."),
    ] = None,
    role_arn: Annotated[
        str | None,
        typer.Option(help="aws: the IAM role MLflow's service account assumes (IRSA)."),
    ] = None,
    serve_image: Annotated[
        str | None,
        typer.Option(help="the serving Deployment's image; default: --image's NAME-serve:TAG."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Render mlpipe's Kubernetes manifests (MLflow, Prefect server and kubernetes worker, the
    serving API, the sharded tuning Jobs) for an overlay, image, spec and shard count."""
    from mlpipe.deploy import k8s
    from mlpipe.spec import load_spec
    from mlpipe.tune.plan import prepare

    spec = load_spec(config)
    settings = k8s.Render(
        overlay=overlay,
        image=image,
        search_id=prepare(spec).search_id,
        shards=shards,
        parallelism=parallelism,
        spec_yaml=config.read_text() if config else None,
        artifacts=artifacts,
        role_arn=role_arn,
        serve_image=serve_image,
    )
    rendered = k8s.render(settings)
    if output is not None:
        output.write_text(rendered)
        typer.echo(f"wrote {output} (search {settings.search_id}, {shards} shards)", err=True)
    elif not do_apply:
        typer.echo(rendered, nl=False)
    if do_apply:
        typer.echo(k8s.apply(rendered), nl=False)


def _prefect_server(command: str) -> None:
    """Deployments, work pools and flow runs live on a Prefect server: without one, say so now
    (Prefect's ephemeral server would take seconds to start, then vanish with this command)."""
    if settings().prefect_api_url is None:
        raise UserError(
            f"{command} needs a Prefect server, and PREFECT_API_URL is not set nor does an "
            "`mlpipe up` stack run: start one with `mlpipe up`, or export "
            "PREFECT_API_URL=http://HOST:4200/api"
        )


def _settings(
    flows: list[str] | None,
    cron: list[str] | None,
    interval: list[str] | None,
    model: str,
    input_root: str,
    output_root: str,
    config: Path | None,
    **pool: Any,
) -> Any:
    from mlpipe.deploy.deployments import deploy_settings

    return deploy_settings(
        flows, cron or [], interval or [], model, input_root, output_root, config,
        settings().tracking_uri, **pool,
    )  # fmt: skip


def _notify(url: str, deployment_ids: list[str], name: str) -> None:
    from mlpipe.deploy.automations import AUTOMATION_NAME, notify_on_failure

    automation_id = notify_on_failure(url, deployment_ids, name)
    automation = AUTOMATION_NAME.format(name=name)
    typer.echo(f"automation {automation!r} ({automation_id}): failed runs call {url}")


@user_errors
def backfill(
    flow: Annotated[str, typer.Argument(help="the flow to backfill: batch_score.")],
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="first date.")],
    end: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="last date (included).")],
    force: Annotated[
        bool, typer.Option("--force", help="rescore partitions whose output exists.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the runs.")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the runs.")] = 3600.0,
    deployment: Annotated[str, typer.Option(help="the deployment's name.")] = DEPLOYMENT_NAME,
    verbose: Verbose = False,
) -> None:
    """One batch_score run per date partition (date=YYYY-MM-DD) whose output is missing."""
    from mlpipe.batch.flow import date_partitions
    from mlpipe.deploy.backfill import backfill as run_backfill

    if flow != "batch_score":
        raise UserError(f"backfill {flow!r}: only batch_score has date partitions")
    _prefect_server("mlpipe backfill")
    statuses = run_backfill(
        date_partitions(start.date(), end.date()),
        force=force,
        wait=wait,
        timeout=timeout,
        deployment=deployment,
    )
    render.backfill_table(
        statuses, f"backfill batch_score/{deployment} {start.date()} .. {end.date()}"
    )
    bad = [s for s in statuses if s.flow_run_id and s.state != "Completed"]
    if bad and wait:
        raise typer.Exit(code=1)
