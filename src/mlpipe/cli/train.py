"""``mlpipe train``: tune a spec's search, track it, register and promote the best model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlpipe.cli import render
from mlpipe.cli.common import Verbose, settings, user_errors
from mlpipe.errors import UserError
from mlpipe.settings import Settings

if TYPE_CHECKING:
    from mlpipe.tune.sharded import ShardOutcome
    from mlpipe.tune.steps import TuneOutcome


@user_errors
def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Spec file (YAML); default: the built-in spec."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="data.source: boston | diabetes | synthetic | breast_cancer | wine | iris | a "
            "CSV/Parquet path."
        ),
    ] = None,
    target: Annotated[str | None, typer.Option(help="data.target: the column to predict.")] = None,
    family: Annotated[
        str | None,
        typer.Option(help="model.family: random_forest | extra_trees | xgboost | lightgbm."),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="model.task: regression | classification.")
    ] = None,
    scoring: Annotated[
        str | None,
        typer.Option(
            help="search.scoring: mse | mae | r2 (regression), log_loss | accuracy | f1_macro | "
            "roc_auc | roc_auc_ovr (classification); default mse / log_loss."
        ),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="search.strategy: grid | random | halving | tpe.")
    ] = None,
    n_trials: Annotated[int | None, typer.Option(help="search.n_trials (random search).")] = None,
    cv: Annotated[
        int | None, typer.Option(help="search.cv: number of (Stratified)KFold splits.")
    ] = None,
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
        float | None,
        typer.Option(
            help="with --finalize: seconds to wait for shards still running (default 0); with "
            "--shard of a halving or tpe search: seconds each step waits for the other shards "
            "(default 3600)."
        ),
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="tracking.experiment (MLflow).")] = None,
    model_name: Annotated[str | None, typer.Option(help="registry.model_name.")] = None,
    artifacts_dir: Annotated[Path | None, typer.Option(help="where results are written.")] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="rerun trials an earlier run already finished.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the final summary.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Tune a model family on a dataset, track every trial, register and promote the best."""
    from mlpipe.spec import load_spec
    from mlpipe.tune.sharded import ShardOutcome

    overrides: dict[str, Any] = {
        "data.source": data,
        "data.target": target,
        "model.family": family,
        "model.task": task,
        "search.scoring": scoring,
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
    environment = settings()
    spec = load_spec(config, overrides)
    part = _shard(shard, finalize, fresh, wait, environment.job_index)
    outcome = _run(spec, environment, fresh, quiet, verbose, part, finalize, wait)
    if isinstance(outcome, ShardOutcome):
        render.shard_summary(outcome, environment)
    else:
        render.tune_summary(outcome, environment)


def _shard(
    text: str | None,
    finalize: str | None,
    fresh: bool,
    wait: float | None,
    job_index: str | None,
) -> Any:
    """``--shard I/N`` checked against the other flags and, inside a Kubernetes Indexed Job,
    against the pod's JOB_COMPLETION_INDEX."""
    from mlpipe.search import Shard

    if wait is not None and wait < 0:
        raise UserError(f"--wait {wait}: give seconds >= 0")
    if wait is not None and finalize is None and text is None:
        raise UserError("--wait applies to --finalize and --shard only")
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
    index = job_index
    if index is not None and index != str(part.index):
        raise UserError(
            f"--shard {part} but JOB_COMPLETION_INDEX is {index}: in an Indexed Job pass "
            f"--shard $(JOB_COMPLETION_INDEX)/{part.count}"
        )
    return part


def _run(
    spec: Any,
    environment: Settings,
    fresh: bool,
    quiet: bool,
    verbose: bool,
    shard: Any = None,
    finalize: str | None = None,
    wait: float | None = None,
) -> TuneOutcome | ShardOutcome:
    """Run the search (or a shard of it, or its finalize) with progress on stderr."""
    from mlpipe.cli import PROCESS_STARTED
    from mlpipe.tune.progress import NullObserver, PlainObserver, RichObserver

    observer: Any
    if quiet:
        observer = NullObserver()
    elif sys.stderr.isatty():
        from rich.console import Console

        observer = RichObserver(Console(stderr=True))
    else:
        observer = PlainObserver(sys.stderr)
    # the first line within a second or two, before the imports and the servers' start
    store = f"the MLflow store {environment.tracking_uri}"
    observer.backends(
        f"connecting to the Prefect server at {environment.prefect_api_url} and {store}"
        if environment.prefect_api_url
        else f"starting Prefect's temporary server (10-30 s on a first run; `mlpipe up` keeps "
        f"one running) and {store}"
    )
    from mlpipe.tune.runtime import run_tuning

    return run_tuning(
        spec,
        environment.tracking_uri,
        observer,
        log_dir=Path(spec.artifacts_dir) / "logs",
        fresh=fresh,
        verbose=verbose,
        process_started=PROCESS_STARTED,
        shard=shard,
        finalize=finalize,
        wait_seconds=wait,
        prefect_api_url=environment.prefect_api_url,
    )
