"""The ``mlpipe`` command: parse, call one function per command, print.

Heavy imports (prefect, mlflow, sklearn) happen inside the commands, so ``mlpipe --help`` is
instant. Environment variables are read here and nowhere else in a run started from the CLI.
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # before the heavy imports, for the cold-start figure

import os  # noqa: E402
import sys  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any  # noqa: E402

import typer  # noqa: E402

from mlpipe.errors import TuningError, UserError  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

    from mlpipe.tune import TuneOutcome

app = typer.Typer(
    help="mlpipe: parallel hyperparameter tuning as a Prefect flow, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
        "tracking.experiment": experiment,
        "registry.model_name": model_name,
        "artifacts_dir": str(artifacts_dir) if artifacts_dir else None,
    }
    try:
        spec = load_spec(config, overrides)
        outcome = _run(spec, fresh=fresh, quiet=quiet, verbose=verbose)
    except UserError as exc:
        if verbose:
            raise
        raise _fail(
            f"{exc}\n(run with --verbose for the full exception)" if exc.__cause__ else str(exc)
        ) from None
    except TuningError as exc:
        raise _fail(str(exc), code=1) from None
    _print_summary(outcome, _console(), tracking_uri=_tracking_uri())


def _tracking_uri() -> str:
    from mlpipe.tracking import resolve_tracking_uri

    return resolve_tracking_uri(os.environ)


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def _run(spec: Any, fresh: bool, quiet: bool, verbose: bool) -> TuneOutcome:
    # A fresh PREFECT_HOME took up to 26 s to start here; Prefect's default wait is shorter.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from mlpipe.terminal import NullObserver, PlainObserver, RichObserver
    from mlpipe.tune import run_tuning

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
    console.print(
        f"open the MLflow UI: {ui}   the Prefect UI: prefect server start (or your PREFECT_API_URL)"
    )


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
    port: Annotated[int, typer.Option(help="port to listen on.")] = 8000,
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
) -> None:
    """Serve a model over HTTP: /predict, MLflow's /invocations, /ready, /model, /metrics."""
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
    from mlflow import MlflowClient

    from mlpipe.predictor import resolve_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = resolve_version(ref, client)
    typer.echo(f"{ref.uri} -> version {version} ({tracking_uri})", err=True)


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
