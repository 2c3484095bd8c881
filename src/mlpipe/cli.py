"""The ``mlpipe`` command: parse, call one function per command, print.

Heavy imports (prefect, mlflow, sklearn) happen inside the commands, so ``mlpipe --help`` is
instant. Environment variables are read here and nowhere else in a run started from the CLI.
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # before the heavy imports, for the cold-start figure

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import datetime  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any  # noqa: E402

import typer  # noqa: E402

from mlpipe.errors import TuningError, UserError  # noqa: E402
from mlpipe.stream.commands import stream_app  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

    from mlpipe.tune.sharded import ShardOutcome
    from mlpipe.tune.steps import TuneOutcome

app = typer.Typer(
    help="mlpipe: tune, register, serve and batch-score models, with Prefect and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _use_running_stack() -> None:
    """While `mlpipe up`'s stack runs, commands use it unless the environment names others."""
    from mlpipe.deploy.stack import active

    if "PREFECT_API_URL" in os.environ and "MLFLOW_TRACKING_URI" in os.environ:
        return
    stack = active()
    if stack is not None:
        for name, value in stack.environment().items():
            os.environ.setdefault(name, value)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Spec file (YAML); default: the built-in spec."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="data.source: boston | diabetes | synthetic | a CSV/Parquet path."),
    ] = None,
    target: Annotated[str | None, typer.Option(help="data.target: the column to predict.")] = None,
    family: Annotated[
        str | None, typer.Option(help="model.family: random_forest | xgboost.")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="search.strategy: grid | random.")] = None,
    n_trials: Annotated[int | None, typer.Option(help="search.n_trials (random search).")] = None,
    cv: Annotated[int | None, typer.Option(help="search.cv: number of KFold splits.")] = None,
    retries: Annotated[
        int | None, typer.Option(help="search.retries: Prefect retries per trial.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="seed for the split, the search and every estimator.")
    ] = None,
    n_jobs: Annotated[int | None, typer.Option(help="trials at once; -1 = all cores.")] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="executor: process | dask-local | dask://HOST:PORT (a Dask cluster)."),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="run only shard I/N of the search (I from 0, as a Kubernetes Indexed Job's "
            "JOB_COMPLETION_INDEX); then --finalize. Needs a shared MLflow tracking server."
        ),
    ] = None,
    finalize: Annotated[
        str | None,
        typer.Option(
            metavar="SEARCH_ID",
            help="gather the shards' trials of SEARCH_ID from MLflow, then refit, register and "
            "promote (same spec as the shards).",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(help="with --finalize: seconds to wait for shards still running."),
    ] = 0.0,
    experiment: Annotated[str | None, typer.Option(help="tracking.experiment (MLflow).")] = None,
    model_name: Annotated[str | None, typer.Option(help="registry.model_name.")] = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="where results are written.")] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="rerun trials an earlier run already finished.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the final summary.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show Prefect/MLflow logs and full tracebacks.")
    ] = False,
) -> None:
    """Tune a model family on a dataset, track every trial, register and promote the best."""
    from mlpipe.spec import load_spec

    overrides: dict[str, Any] = {
        "data.source": data,
        "data.target": target,
        "model.family": family,
        "search.strategy": strategy,
        "search.n_trials": n_trials,
        "search.cv": cv,
        "search.retries": retries,
        "seed": seed,
        "n_jobs": n_jobs,
        "executor": executor,
        "tracking.experiment": experiment,
        "registry.model_name": model_name,
        "artifacts_dir": str(artifacts_dir) if artifacts_dir else None,
    }
    try:
        spec = load_spec(config, overrides)
        part = _shard(shard, finalize, fresh, wait)
        outcome = _run(spec, fresh, quiet, verbose, part, finalize, wait)
    except UserError as exc:
        if verbose:
            raise
        raise _fail(
            f"{exc}\n(run with --verbose for the full exception)" if exc.__cause__ else str(exc)
        ) from None
    except TuningError as exc:
        raise _fail(str(exc), code=1) from None
    from mlpipe.tune.sharded import ShardOutcome

    if isinstance(outcome, ShardOutcome):
        _print_shard_summary(outcome, _console(), tracking_uri=_tracking_uri())
    else:
        _print_summary(outcome, _console(), tracking_uri=_tracking_uri())


def _shard(text: str | None, finalize: str | None, fresh: bool, wait: float) -> Any:
    """``--shard I/N`` checked against the other flags and, inside a Kubernetes Indexed Job,
    against the pod's JOB_COMPLETION_INDEX."""
    from mlpipe.search import Shard

    if wait < 0:
        raise UserError(f"--wait {wait}: give seconds >= 0")
    if wait and finalize is None:
        raise UserError("--wait applies to --finalize only")
    if text is None:
        return None
    if finalize is not None:
        raise UserError("--shard and --finalize are separate steps: run each shard, then finalize")
    if fresh:
        raise UserError(
            "--fresh cannot be combined with --shard: shards share the search's finished trials "
            "in MLflow; start a new search instead (change the spec or the experiment)"
        )
    try:
        part = Shard.parse(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is not None and index != str(part.index):
        raise UserError(
            f"--shard {part} but JOB_COMPLETION_INDEX is {index}: in an Indexed Job pass "
            f"--shard $(JOB_COMPLETION_INDEX)/{part.count}"
        )
    return part


def _tracking_uri() -> str:
    from mlpipe.tracking import resolve_tracking_uri

    return resolve_tracking_uri(os.environ)


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def _run(
    spec: Any,
    fresh: bool,
    quiet: bool,
    verbose: bool,
    shard: Any = None,
    finalize: str | None = None,
    wait: float = 0.0,
) -> TuneOutcome | ShardOutcome:
    # A fresh PREFECT_HOME took up to 26 s to start here; Prefect's default wait is shorter.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from mlpipe.tune.progress import NullObserver, PlainObserver, RichObserver
    from mlpipe.tune.runtime import run_tuning

    observer: Any
    if quiet:
        observer = NullObserver()
    elif sys.stderr.isatty():
        from rich.console import Console

        observer = RichObserver(Console(stderr=True))
    else:
        observer = PlainObserver(sys.stderr)
    return run_tuning(
        spec,
        _tracking_uri(),
        observer,
        log_dir=Path(spec.artifacts_dir) / "logs",
        fresh=fresh,
        verbose=verbose,
        process_started=PROCESS_STARTED,
        shard=shard,
        finalize=finalize,
        wait_seconds=wait,
    )


def _print_shard_summary(outcome: ShardOutcome, console: Console, tracking_uri: str) -> None:
    results = outcome.results
    failed = sum(r.status != "completed" for r in results)
    console.print(
        f"shard {outcome.shard} of search {outcome.search_id}: {len(results)} trials "
        f"({outcome.reused} already in MLflow, {failed} failed), "
        f"{100 * outcome.expected_share:.1f}% of the search's expected cost, "
        f"fits {outcome.fit_seconds:.1f}s"
    )
    console.print(f"mlflow parent run {outcome.parent_run_id}  ({tracking_uri})")
    console.print(f"results {outcome.results_path}")
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    console.print(f"timings: {timings}")
    console.print(
        f"when every shard is done: mlpipe train --finalize {outcome.search_id} (same spec)"
    )


def _print_summary(outcome: TuneOutcome, console: Console, tracking_uri: str) -> None:
    from rich.table import Table

    done = sorted(
        (r for r in outcome.results if r.status == "completed"),
        key=lambda r: (r.mean_score, r.index),
    )
    failed = len(outcome.results) - len(done)
    table = Table(
        title=f"top {min(5, len(done))} of {len(outcome.results)} trials ({failed} failed)"
    )
    table.add_column("rank", justify="right")
    table.add_column("trial")
    table.add_column("params")
    table.add_column("cv mse", justify="right")
    table.add_column("± std", justify="right")
    for rank, r in enumerate(done[:5], 1):
        params = ", ".join(f"{k}={v}" for k, v in r.params.items())
        table.add_row(str(rank), r.trial_id, params, f"{r.mean_score:.4f}", f"{r.std_score:.4f}")
    console.print(table)
    p, t = outcome.promotion, outcome.test_metrics
    scores = "  ".join(f"{name} {t[name]:.4f}" for name in ("mse", "rmse", "mae", "r2"))
    console.print(f"test split: {scores}")
    if p.champion_mse is None:
        verdict = "first version: it becomes the champion"
    else:
        better = "beats" if p.promoted else "does not beat"
        verdict = (
            f"new test mse {p.test_mse:.4f} {better} champion v{p.champion_version}'s "
            f"{p.champion_mse:.4f} on the same split"
        )
    name = outcome.model_name
    console.print(f"registered {name} version {p.version} -> alias [bold]{p.alias}[/] ({verdict})")
    console.print(f"mlflow parent run {outcome.parent_run_id}  ({tracking_uri})")
    console.print(f"artifacts {outcome.artifacts_path}/")
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    console.print(f"timings: {timings}")
    ui = (
        f"mlflow ui --backend-store-uri {tracking_uri}"
        if tracking_uri.startswith("sqlite")
        else tracking_uri
    )
    api = os.environ.get("PREFECT_API_URL")
    prefect_ui = api.removesuffix("/api") if api else "prefect server start"
    console.print(f"open the MLflow UI: {ui}   the Prefect UI: {prefect_ui}")


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="models:/NAME@ALIAS (followed), models:/NAME/VERSION, or a model folder.",
        ),
    ],
    host: Annotated[str, typer.Option(help="address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on.", envvar="MLPIPE_PORT")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes (one per core).")] = 1,
    poll_seconds: Annotated[
        float, typer.Option(help="how often to check where the alias points.")
    ] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="MLPIPE_SERVE_TOKEN",
            help="require 'Authorization: Bearer TOKEN' on /predict and /invocations "
            "(prefer the MLPIPE_SERVE_TOKEN variable: flags land in shell history).",
            show_default=False,
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="larger bodies get 413.")] = 1_048_576,
    max_rows: Annotated[int, typer.Option(help="larger batches get 413.")] = 10_000,
    drain_seconds: Annotated[
        float, typer.Option(help="after SIGTERM, keep serving this long with /ready at 503.")
    ] = 0.0,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="JSON access log on stdout.")
    ] = True,
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="use the ONNX fast path when it matches.")
    ] = True,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="load pickled models (runs their code: trust them)."),
    ] = False,
    drift_window: Annotated[
        int | None,
        typer.Option(help="rows compared with the training profile; default: the spec's window."),
    ] = None,
    drift_seconds: Annotated[
        float, typer.Option(help="seconds between drift checks (and /metrics scrapes).")
    ] = 15.0,
) -> None:
    """Serve a model over HTTP: /predict, MLflow's /invocations, /ready, /model, /metrics
    (with the drift of the last N rows; mlpipe.drift.detected goes to PREFECT_API_URL if set)."""
    from mlpipe.predictor import parse_model_uri
    from mlpipe.serve.config import build_config

    try:
        config = build_config(
            model_uri=model,
            tracking_uri=_tracking_uri(),
            host=host,
            port=port,
            workers=workers,
            poll_seconds=poll_seconds,
            token=token,
            max_body_bytes=max_body_bytes,
            max_rows=max_rows,
            drain_seconds=drain_seconds,
            access_log=access_log,
            onnx=onnx,
            allow_pickle=allow_pickle,
            drift_window=drift_window,
            drift_seconds=drift_seconds,
            drift_events=bool(os.environ.get("PREFECT_API_URL")),
        )
        ref = parse_model_uri(model)
        if ref.name is not None:
            _check_registered(ref, config.tracking_uri)
    except UserError as exc:
        raise _fail(str(exc)) from None
    from mlpipe.serve.server import run

    run(config)


def _check_registered(ref: Any, tracking_uri: str) -> None:
    """Fail before the server starts when the name, alias or version does not exist."""
    from mlpipe.predictor import registry_client, resolve_version

    version = resolve_version(ref, registry_client(tracking_uri))
    typer.echo(f"{ref.uri} -> version {version} ({tracking_uri})", err=True)


@app.command()
def score(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model folder."
        ),
    ],
    input: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="a CSV or Parquet file or folder; or a database: postgresql://USER@HOST/DB, "
            "sqlite:///FILE, env:VARIABLE or secret:PREFECT_SECRET (with --table or --query).",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="the Parquet file to write, or a database (with --output-table)."
        ),
    ],
    table: Annotated[str | None, typer.Option(help="the input table (database input).")] = None,
    query: Annotated[
        str | None,
        typer.Option(help="the input query, with :name parameters (database input)."),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the query's :KEY (repeat).")
    ] = None,
    output_table: Annotated[
        str | None, typer.Option(help="the table to write (database output).")
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            help="KEY=VALUE: the output partition a rerun replaces (column KEY); also bound as "
            ":KEY in --query. Default: the whole table."
        ),
    ] = None,
    id_column: Annotated[
        list[str] | None,
        typer.Option(
            "--id-column", help="column(s) copied to the output (repeat); default: row number."
        ),
    ] = None,
    max_rejects: Annotated[
        int,
        typer.Option(help="stop (writing nothing) past this many bad rows; -1: no limit."),
    ] = 1000,
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="use the ONNX fast path when it matches.")
    ] = True,
    workers: Annotated[int, typer.Option(help="batches predicted at once; 0: one per core.")] = 0,
    drift_report: Annotated[
        Path | None,
        typer.Option(help="write the drift report (HTML) here; needs a model with a profile."),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="load pickled models (runs their code: trust them)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar.")] = False,
) -> None:
    """Score a file, folder, table or query into Parquet or a table in bounded memory; bad rows
    to rejects; the inputs' drift from the training data."""
    from mlpipe import drift
    from mlpipe.batch import files
    from mlpipe.batch import score as scoring
    from mlpipe.predictor import open_model

    console = _console()
    try:
        source, target = _score_ends(input, output, table, query, param, output_table, partition)
        loaded = open_model(model, _tracking_uri(), allow_pickle=allow_pickle, fast=onnx)
        total = files.count_rows(source) if isinstance(source, Path) else None
        monitor = drift.Counts(loaded.profile) if loaded.profile else None
        with _row_progress(console, total, enabled=not quiet) as advance:
            summary = scoring.score(
                loaded,
                source,
                target,
                id_columns=id_column or (),
                max_rejects=None if max_rejects < 0 else max_rejects,
                on_progress=advance,
                workers=workers or None,
                monitor=monitor,
            )
    except UserError as exc:
        raise _fail(str(exc)) from None
    _print_score_summary(summary, console)
    if monitor is None:
        console.print("drift: not checked (the model version has no training profile)")
        return
    result = drift.compare(monitor)
    console.print(f"drift: {_drift_line(result)}")
    if drift_report is not None:
        title = f"Drift of {summary.input} from {summary.model_name} v{summary.model_version}"
        drift_report.write_text(drift.html_report(result, monitor.profile, title))
        console.print(f"drift report {drift_report}")


def _drift_line(result: Any) -> str:
    worst = max(result.features, key=lambda f: f.psi)
    detail = f"max PSI {worst.psi:.3f} ({worst.name}), prediction PSI {result.prediction.psi:.3f}"
    if result.drifted:
        return (
            f"[red]DRIFT[/] in {', '.join(result.drifted_features) or 'the predictions'}; {detail}"
        )
    return f"none past the thresholds; {detail}"


def _score_ends(
    input: str,
    output: str,
    table: str | None,
    query: str | None,
    params: list[str] | None,
    output_table: str | None,
    partition: str | None,
) -> tuple[Any, Any]:
    """The input (a path or ``SqlSource``) and output (a path or ``SqlTarget``) asked for."""
    from mlpipe.batch.score import SqlTarget
    from mlpipe.batch.sql import SqlSource, is_database, parse_pairs, resolve_url

    pairs = parse_pairs([partition] if partition else [], "--partition")
    if is_database(input):
        url = resolve_url(input, "--input", os.environ, _prefect_secret)
        source: Any = SqlSource(url, table, query, pairs | parse_pairs(params or [], "--param"))
    elif table or query or params:
        raise UserError("--table, --query and --param are for a database --input")
    else:
        source = Path(input)
    if is_database(output):
        if not output_table:
            raise UserError("--output is a database: name the table with --output-table")
        url = resolve_url(output, "--output", os.environ, _prefect_secret)
        return source, SqlTarget(url, output_table, next(iter(pairs.items()), None))
    if output_table or (partition and not is_database(input)):
        raise UserError("--output-table and --partition are for a database --output")
    return source, Path(output)


def _prefect_secret(name: str) -> str:
    """The value of a Prefect Secret block (a database URL with its password)."""
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync from a sync caller
        value = block.get()
    except ValueError as exc:
        raise UserError(f"secret:{name}: no Prefect Secret block of that name ({exc})") from None
    return str(value)


def _print_score_summary(summary: Any, console: Console) -> None:
    console.print(
        f"scored {summary.scored:,} of {summary.rows:,} rows with {summary.model_name or 'model'} "
        f"version {summary.model_version or '-'} ({summary.predictor}) in "
        f"{summary.seconds:.1f}s: {summary.rows_per_second:,.0f} rows/s"
    )
    console.print(f"input {summary.input}")
    console.print(f"output {summary.output}")
    if summary.rejected:
        console.print(f"[yellow]{summary.rejected:,} rows rejected[/] -> {summary.rejects}")
        for line in summary.first_rejects[:3]:
            console.print(f"  {line}", markup=False)


@contextlib.contextmanager
def _row_progress(console: Console, total: int | None, enabled: bool) -> Iterator[Any]:
    """A rich progress bar over rows on a terminal; nothing in a pipe or with --quiet."""
    if not (enabled and console.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("rows", total=total)
        yield lambda rows: progress.advance(task, rows)


deploy_app = typer.Typer(
    help="Create mlpipe's Prefect deployments (tune/mlpipe, batch_score/mlpipe) and render its "
    "Kubernetes manifests.",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")
app.add_typer(stream_app, name="stream")

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
InputRootOption = Annotated[Path, typer.Option(help="batch_score reads INPUT_ROOT/PARTITION/.")]
OutputRootOption = Annotated[
    Path, typer.Option(help="batch_score writes OUTPUT_ROOT/PARTITION/predictions.parquet.")
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


@deploy_app.command("apply")
def deploy_apply(
    flows: FlowsOption = None,
    cron: CronOption = None,
    interval: IntervalOption = None,
    model: ModelOption = "models:/boston-rf@champion",
    input_root: InputRootOption = Path("data/incoming"),
    output_root: OutputRootOption = Path("data/scored"),
    config: SpecOption = None,
    notify_webhook: WebhookOption = None,
    pool: Annotated[
        str, typer.Option(help="the work pool (created if missing).")
    ] = "mlpipe-process",
    pool_type: Annotated[str, typer.Option(help="process | kubernetes.")] = "process",
    working_dir: Annotated[
        Path | None, typer.Option(help="process pools: where runs start; default: here.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="kubernetes: the mlpipe image.")] = None,
    namespace: Annotated[str, typer.Option(help="kubernetes: the namespace.")] = "default",
    cpu_request: Annotated[str | None, typer.Option(help="kubernetes, e.g. 500m.")] = None,
    cpu_limit: Annotated[str | None, typer.Option(help="kubernetes, e.g. 2.")] = None,
    memory_request: Annotated[str | None, typer.Option(help="kubernetes, e.g. 1Gi.")] = None,
    memory_limit: Annotated[str | None, typer.Option(help="kubernetes, e.g. 4Gi.")] = None,
) -> None:
    """Register the deployments on a work pool; a worker of that pool runs them
    (prefect worker start --pool mlpipe-process)."""
    from mlpipe.deploy import deployments
    from mlpipe.deploy.deployments import KubernetesJob

    try:
        if pool_type not in deployments.POOL_TYPES:
            raise UserError(f"--pool-type {pool_type!r}: expected process or kubernetes")
        kubernetes = None
        if pool_type == "kubernetes":
            if not image:
                raise UserError("--pool-type kubernetes needs --image (the mlpipe image to run)")
            kubernetes = KubernetesJob(
                image, namespace, cpu_request, cpu_limit, memory_request, memory_limit
            )
        settings = _deploy_settings(
            flows, cron, interval, model, input_root, output_root, config,
            pool=pool, kubernetes=kubernetes,
            working_dir=(working_dir or Path.cwd()).resolve() if pool_type == "process" else None,
        )  # fmt: skip
        typer.echo(deployments.ensure_pool(pool, pool_type))
        created = deployments.apply(settings)
        for name, deployment_id in created:
            typer.echo(f"deployment {name} ({deployment_id}) on pool {pool!r}")
        if notify_webhook:
            _notify(notify_webhook, [i for _, i in created])
    except UserError as exc:
        raise _fail(str(exc)) from None
    if pool_type == "process":
        typer.echo(f"start a worker: prefect worker start --pool {pool} --type process")
    typer.echo(
        "run one now: prefect deployment run batch_score/mlpipe -p partition=date=2026-11-22"
    )


@deploy_app.command("triggers")
def deploy_triggers(
    model: ModelOption = "models:/boston-rf@champion",
    input_root: InputRootOption = Path("data/incoming"),
    output_root: OutputRootOption = Path("data/scored"),
    config: SpecOption = None,
    pool: Annotated[
        str, typer.Option(help="the process work pool (created if missing).")
    ] = "mlpipe-process",
    working_dir: Annotated[
        Path | None, typer.Option(help="where runs start; default: here.")
    ] = None,
    sensor_interval: Annotated[
        float, typer.Option(help="seconds between two looks at INPUT_ROOT.")
    ] = 60.0,
    retrain_cron: Annotated[
        str, typer.Option(help="tune/mlpipe's schedule (UTC); default Mondays 03:00.")
    ] = "0 3 * * 1",
    notify_webhook: Annotated[
        str | None, typer.Option(help="call this URL on mlpipe.drift.detected.")
    ] = None,
    retrain_on_drift: Annotated[
        bool, typer.Option(help="also run tune/mlpipe on mlpipe.drift.detected.")
    ] = False,
) -> None:
    """Event-driven runs: a new partition is scored when it lands, a new champion re-scores the
    latest partition, tune runs weekly, and drift calls a webhook (and can retrain)."""
    from mlpipe.deploy import deployments, triggers
    from mlpipe.predictor import parse_model_uri

    try:
        name = parse_model_uri(model).name
        if name is None:
            raise UserError(
                f"--model {model}: triggers follow a registered model (models:/NAME@ALIAS)"
            )
        if retrain_on_drift and not notify_webhook:
            raise UserError(
                "--retrain-on-drift rides on the drift automation: give --notify-webhook"
            )
        settings = _deploy_settings(
            list(deployments.FLOW_ENTRYPOINTS), [f"tune={retrain_cron}"],
            [f"watch_incoming={sensor_interval}"], model, input_root, output_root, config,
            pool=pool, working_dir=(working_dir or Path.cwd()).resolve(),
        )  # fmt: skip
        settings.triggers["batch_score"] = triggers.batch_score_triggers(name)
        typer.echo(deployments.ensure_pool(pool, "process"))
        created = dict(deployments.apply(settings))
        for full_name, deployment_id in created.items():
            typer.echo(f"deployment {full_name} ({deployment_id}) on pool {pool!r}")
        typer.echo(
            f"triggers: {triggers.DATA_ARRIVED} -> batch_score(partition); "
            f"{triggers.MODEL_PROMOTED} of {name} -> batch_score(latest, new version); "
            f"tune every '{retrain_cron}'; watch_incoming every {sensor_interval:g}s"
        )
        if notify_webhook:
            retrain = created["tune/mlpipe"] if retrain_on_drift else None
            automation_id = triggers.notify_on_drift(notify_webhook, retrain)
            typer.echo(
                f"automation {triggers.DRIFT_AUTOMATION!r} ({automation_id}): "
                f"{triggers.DRIFT_DETECTED} calls {notify_webhook}"
                + (" and runs tune/mlpipe" if retrain else "")
            )
    except UserError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"start a worker: prefect worker start --pool {pool} --type process")


@deploy_app.command("serve")
def deploy_serve(
    flows: FlowsOption = None,
    cron: CronOption = None,
    interval: IntervalOption = None,
    model: ModelOption = "models:/boston-rf@champion",
    input_root: InputRootOption = Path("data/incoming"),
    output_root: OutputRootOption = Path("data/scored"),
    config: SpecOption = None,
    notify_webhook: WebhookOption = None,
    limit: Annotated[
        int | None, typer.Option(help="flow runs at once (default: no limit).")
    ] = None,
) -> None:
    """Serve the deployments from this process (static infrastructure) until Ctrl-C."""
    from mlpipe.deploy import deployments

    try:
        settings = _deploy_settings(flows, cron, interval, model, input_root, output_root, config)
        if notify_webhook:  # the automation needs the deployments' ids before serving
            _notify(notify_webhook, [str(d.apply()) for d in deployments.build(settings, False)])
    except UserError as exc:
        raise _fail(str(exc)) from None
    deployments.serve(settings, limit=limit)


@deploy_app.command("k8s")
def deploy_k8s(
    image: Annotated[
        str, typer.Option(help="the mlpipe image every pod runs, e.g. REGISTRY/mlpipe:0.1.0.")
    ],
    overlay: Annotated[str, typer.Option(help="local (kind, minikube) | gke.")] = "local",
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
) -> None:
    """Render mlpipe's Kubernetes manifests (MLflow, Prefect server and kubernetes worker, the
    serving API, the sharded tuning Jobs) for an overlay, image, spec and shard count."""
    from mlpipe.deploy import k8s
    from mlpipe.spec import load_spec
    from mlpipe.tune.steps import prepare

    try:
        spec = load_spec(config)
        settings = k8s.Render(
            overlay=overlay,
            image=image,
            search_id=prepare(spec).search_id,
            shards=shards,
            parallelism=parallelism,
            spec_yaml=config.read_text() if config else None,
        )
        rendered = k8s.render(settings)
        if output is not None:
            output.write_text(rendered)
            typer.echo(f"wrote {output} (search {settings.search_id}, {shards} shards)", err=True)
        elif not do_apply:
            typer.echo(rendered, nl=False)
        if do_apply:
            typer.echo(k8s.apply(rendered), nl=False)
    except UserError as exc:
        raise _fail(str(exc)) from None


def _deploy_settings(
    flows: list[str] | None,
    cron: list[str] | None,
    interval: list[str] | None,
    model: str,
    input_root: Path,
    output_root: Path,
    config: Path | None,
    **pool: Any,
) -> Any:
    from mlpipe.deploy.deployments import (
        DEFAULT_FLOWS,
        FLOW_ENTRYPOINTS,
        DeploySettings,
        parse_schedules,
    )
    from mlpipe.predictor import parse_model_uri
    from mlpipe.spec import load_spec

    chosen = tuple(flows or DEFAULT_FLOWS)
    unknown = [f for f in chosen if f not in FLOW_ENTRYPOINTS]
    if unknown:
        raise UserError(f"--flow {unknown[0]!r}: expected one of {', '.join(FLOW_ENTRYPOINTS)}")
    parse_model_uri(model)
    tracking_uri = _absolute_tracking_uri(_tracking_uri())
    parameters: dict[str, dict[str, Any]] = {
        "batch_score": {
            "model": model,
            "input_root": str(input_root.resolve()),
            "output_root": str(output_root.resolve()),
            "tracking_uri": tracking_uri,
        },
        "tune": {
            "spec": load_spec(config, {}).model_dump(mode="json"),
            "tracking_uri": tracking_uri,
        },
        "watch_incoming": {
            "input_root": str(input_root.resolve()),
            "output_root": str(output_root.resolve()),
        },
    }
    return DeploySettings(
        flows=chosen,
        parameters=parameters,
        schedules=parse_schedules(cron or [], interval or []),
        **pool,
    )


def _absolute_tracking_uri(uri: str) -> str:
    """A relative SQLite path made absolute: runs start in other working directories."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def _notify(url: str, deployment_ids: list[str]) -> None:
    from mlpipe.deploy.automations import AUTOMATION_NAME, notify_on_failure

    automation_id = notify_on_failure(url, deployment_ids)
    typer.echo(f"automation {AUTOMATION_NAME!r} ({automation_id}): failed runs call {url}")


@app.command()
def backfill(
    flow: Annotated[str, typer.Argument(help="the flow to backfill: batch_score.")],
    start: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="first date.")],
    end: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="last date (included).")],
    force: Annotated[
        bool, typer.Option("--force", help="rescore partitions whose output exists.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the runs.")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the runs.")] = 3600.0,
    deployment: Annotated[str, typer.Option(help="the deployment's name.")] = "mlpipe",
) -> None:
    """One batch_score run per date partition (date=YYYY-MM-DD) whose output is missing."""
    from rich.table import Table

    from mlpipe.batch.flow import date_partitions
    from mlpipe.deploy.backfill import backfill as run_backfill

    try:
        if flow != "batch_score":
            raise UserError(f"backfill {flow!r}: only batch_score has date partitions")
        statuses = run_backfill(
            date_partitions(start.date(), end.date()),
            force=force,
            wait=wait,
            timeout=timeout,
            deployment=deployment,
        )
    except UserError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"backfill batch_score/{deployment} {start.date()} .. {end.date()}")
    for column in ("partition", "action", "flow run", "state", "message"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.partition, s.action, s.flow_run_name or "-", s.state or "-", s.message or ""
        )
    _console().print(table)
    bad = [s for s in statuses if s.flow_run_id and s.state != "Completed"]
    if bad and wait:
        raise typer.Exit(code=1)


@app.command()
def up(
    prefect_port: Annotated[int, typer.Option(help="Prefect server port (0: any free).")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port (0: any free).")] = 5000,
    pool: Annotated[str, typer.Option(help="the process work pool of the worker.")] = (
        "mlpipe-process"
    ),
) -> None:
    """Start a local Prefect server, MLflow server and process worker in the background."""
    from mlpipe.deploy import stack as local

    folder = local.state_dir()
    typer.echo(f"starting the stack in {folder} (logs in {folder / 'logs'}) ...", err=True)
    try:
        started = local.up(folder, prefect_port, mlflow_port, pool)
    except UserError as exc:
        raise _fail(str(exc)) from None
    for service in started.services:
        typer.echo(f"{service.name:<8} pid {service.pid:<8} {service.url}")
    ui = started.prefect_api_url.removesuffix("/api")
    typer.echo(f"Prefect UI {ui}   MLflow UI {started.mlflow_url}")
    typer.echo("mlpipe train, score and serve use this stack while it runs; for other tools:")
    for name, value in started.environment().items():
        typer.echo(f"export {name}={value}")


@app.command()
def status() -> None:
    """Show whether the stack `mlpipe up` started is running and answering."""
    from mlpipe.deploy import stack as local

    folder = local.state_dir()
    found = local.Stack.load(folder)
    if found is None:
        typer.echo(f"no stack recorded in {folder}; start one with mlpipe up")
        raise typer.Exit(code=3)
    rows = local.status(found)
    for service, running, answering in rows:
        state = "up" if answering else ("starting/not answering" if running else "stopped")
        typer.echo(f"{service.name:<8} pid {service.pid:<8} {state:<24} {service.url}")
    if not all(answering for _, _, answering in rows):
        raise typer.Exit(code=1)


@app.command()
def down() -> None:
    """Stop the processes `mlpipe up` started (by their recorded pids)."""
    from mlpipe.deploy import stack as local

    found = local.Stack.load(local.state_dir())
    if found is None:
        typer.echo("no stack is recorded; nothing to stop")
        return
    stopped = local.down(found)
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="where to write the example spec")] = Path(
        "mlpipe.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write an example pipeline spec (the defaults, commented)."""
    from mlpipe.spec import EXAMPLE_SPEC

    if path.exists() and not force:
        raise _fail(f"{path} exists; pass --force to overwrite it")
    path.write_text(EXAMPLE_SPEC)
    typer.echo(f"wrote {path}; run it with: mlpipe train --config {path}")


@app.command()
def version() -> None:
    """Print the versions of mlpipe and the stack it runs on."""
    for name in ("mlpipe", "prefect", "mlflow", "scikit-learn", "xgboost-cpu"):
        try:
            typer.echo(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            typer.echo(f"{name} not installed")


if __name__ == "__main__":
    app()
