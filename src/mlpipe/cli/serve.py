"""``mlpipe serve``: the prediction API over a registered model or a model folder."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mlpipe.cli.common import Verbose, settings, user_errors


@user_errors
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
    verbose: Verbose = False,
) -> None:
    """Serve a model over HTTP: /predict, MLflow's /invocations, /ready, /model, /metrics
    (with the drift of the last N rows; mlpipe.drift.detected goes to PREFECT_API_URL if set)."""
    from mlpipe.predictor import parse_model_uri
    from mlpipe.serve.config import build_config

    environment = settings()
    config = build_config(
        model_uri=model,
        tracking_uri=environment.tracking_uri,
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
        drift_events=environment.prefect_api_url is not None,
    )
    from mlpipe.serve.server import check_port, run

    ref = parse_model_uri(model)  # bad arguments first, then the port, then the registry
    check_port(config.host, config.port)
    if ref.name is not None:
        _check_registered(ref, config.tracking_uri)
    run(config)


def _check_registered(ref: Any, tracking_uri: str) -> None:
    """Fail before the server starts when the name, alias or version does not exist."""
    from mlpipe.predictor import registry_client, resolve_version

    version = resolve_version(ref, registry_client(tracking_uri))
    typer.echo(f"{ref.uri} -> version {version} ({tracking_uri})", err=True)
