"""The ``tune`` Prefect flow: fan the trials out, track each in MLflow, refit, register, promote.

The only module that knows about Prefect's fan-out. The ML work is in ``search``/``trial``; MLflow
calls go through ``tracking.Tracker``. The flow takes only JSON-able parameters (the spec and the
tracking URI), so it runs the same from the CLI, a deployment or a worker.

Task runner, chosen by measurement (2 cores, the reference grid, same 27 units): a process pool
took 8.6 s, a thread pool 14.9 s. RandomForest fits hold the GIL for a good share of their
time on small tables, so threads serialise; processes do not. Hence ProcessPoolTaskRunner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner

from mlpipe import artifacts
from mlpipe.data import Dataset, Split, load_dataset, split_dataset
from mlpipe.errors import DataError, TuningError
from mlpipe.models import get_family
from mlpipe.search import (
    TrialConfig,
    Unit,
    expand,
    make_search_id,
    make_trials,
    plan_units,
    select_best,
)
from mlpipe.spec import Spec
from mlpipe.terminal import NullObserver, Observer
from mlpipe.tracking import CHALLENGER, CHAMPION, Promotion, Tracker, resolve_tracking_uri
from mlpipe.trial import TrialResult, failed_results, fit_final, kfold, regression_metrics, run_unit

# Progress is presentation, not a flow parameter: the caller sets it around the flow call.
observer_var: ContextVar[Observer | None] = ContextVar("mlpipe_observer", default=None)


@dataclass
class TuneOutcome:
    """What a finished search produced (what the CLI prints)."""

    search_id: str
    artifacts_path: str
    parent_run_id: str
    experiment_id: str
    results: list[TrialResult]
    best: TrialResult
    test_metrics: dict[str, float]
    model_uri: str
    model_name: str
    promotion: Promotion
    reused: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@task(name="cross-validate", cache_policy=NONE, task_run_name="cv {label}")
def cross_validate(
    unit: Unit, family: str, X: np.ndarray, y: np.ndarray, folds: list[Any], seed: int, label: str
) -> list[TrialResult]:
    """Cross-validate one unit of configs (a Prefect task; runs in a pool process)."""
    return run_unit(unit, get_family(family), X, y, folds, seed)


@task(name="refit", cache_policy=NONE)
def refit(family: str, params: dict[str, Any], split: Split, seed: int) -> tuple[Any, np.ndarray]:
    """Refit the best config on the whole training split; predict the held-out split."""
    model = fit_final(get_family(family), params, split.X_train, split.y_train, seed)
    return model, np.asarray(model.predict(split.X_test))


def unit_label(unit: Unit) -> str:
    """A readable task-run name: the unit's fixed params and its sizes."""
    fixed = {k: v for k, v in unit.trials[0].params.items() if k != unit.size_param}
    sizes = "/".join(map(str, unit.sizes))
    return ",".join([f"{unit.size_param}={sizes}", *(f"{k}={v}" for k, v in sorted(fixed.items()))])


@flow(name="tune", task_runner=ProcessPoolTaskRunner())  # type: ignore[arg-type]
def tune(
    spec: dict[str, Any] | None = None, tracking_uri: str | None = None, fresh: bool = False
) -> TuneOutcome:
    """Tune, track, refit, register and promote the spec's search (default: the built-in spec;
    tracking URI default: MLFLOW_TRACKING_URI, else ./mlflow.db)."""
    parsed = Spec.model_validate(spec or {})
    tracker = Tracker.connect(tracking_uri or resolve_tracking_uri(), parsed.experiment_name)
    return run_search(parsed, tracker, fresh)


@dataclass(frozen=True)
class Prepared:
    """A search made concrete: data, split, folds, trials and their ids."""

    dataset: Dataset
    split: Split
    folds: list[tuple[np.ndarray, np.ndarray]]
    trials: list[TrialConfig]
    search_id: str


def prepare(spec: Spec) -> Prepared:
    """Load and check the data and expand the search; raises UserError on bad input."""
    family = get_family(spec.model.family)
    dataset = load_dataset(spec.data, spec.seed)
    split = split_dataset(dataset, spec.data.test_size, spec.seed)
    n_train = len(split.y_train)
    if spec.search.cv > n_train:
        raise DataError(
            f"search.cv: {spec.search.cv} folds need at least {spec.search.cv} training rows; "
            f"{dataset.name} has {n_train} after the test split. Lower search.cv"
        )
    configs = expand(spec.search_space, spec.search.strategy, spec.seed, spec.search.n_trials)
    trials = make_trials(configs, family.name, dataset.fingerprint, spec.search.cv, spec.seed)
    search_id = make_search_id(
        family.name, (t.trial_id for t in trials), dataset.fingerprint, spec.search.cv
    )
    return Prepared(dataset, split, kfold(n_train, spec.search.cv), trials, search_id)


def run_search(spec: Spec, tracker: Tracker, fresh: bool) -> TuneOutcome:
    """The body of the flow: must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    family = get_family(spec.model.family)
    plan = prepare(spec)
    dataset, split, folds, trials, search_id = (
        plan.dataset,
        plan.split,
        plan.folds,
        plan.trials,
        plan.search_id,
    )
    X, y = split.train_arrays
    out_dir = Path(spec.artifacts_dir) / search_id

    previous = {} if fresh else artifacts.completed_trials(out_dir)
    reused = [previous[t.trial_id] for t in trials if t.trial_id in previous]
    for result, trial in zip(reused, [t for t in trials if t.trial_id in previous], strict=True):
        result.index = trial.index  # grid order of this run decides ties
    todo = [t for t in trials if t.trial_id not in previous]
    units = plan_units(todo, family)

    parent_run_id = tracker.start_search(
        search_id,
        params={
            "family": family.name,
            "strategy": spec.search.strategy,
            "cv": spec.search.cv,
            "seed": spec.seed,
            "data": spec.data.source,
            "n_trials": len(trials),
            "test_size": spec.data.test_size,
        },
        tags={"mlpipe.data_fingerprint": dataset.fingerprint, "mlpipe.data": dataset.name},
    )
    observer.start(total=len(trials), reused=len(reused))
    results: list[TrialResult] = []
    for result in reused:
        tracker.log_trial(parent_run_id, result)
        results.append(result)
    timings["prepare"] = time.perf_counter() - started

    cv_task = cross_validate.with_options(
        retries=spec.search.retries, retry_delay_seconds=spec.search.retry_delay_seconds
    )
    futures = {
        cv_task.submit(u, family.name, X, y, folds, spec.seed, unit_label(u)): u for u in units
    }
    for future in as_completed(list(futures)):
        try:
            unit_results = future.result()
        except Exception as exc:  # the trial's own error: recorded, and the search goes on
            unit_results = failed_results(futures[future], exc)
        for result in unit_results:
            tracker.log_trial(parent_run_id, result)
            results.append(result)
            observer.trial_done(result, select_best(results))
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]

    results.sort(key=lambda r: r.index)
    best = select_best(results)
    if best is None:
        tracker.end_search(parent_run_id, ok=False)
        errors = sorted({r.error or "" for r in results})
        raise TuningError(
            f"all {len(results)} trials failed; first error: {errors[0] if errors else 'unknown'}"
        )

    model, predictions = refit.submit(family.name, best.params, split, spec.seed).result()
    test_metrics = regression_metrics(split.y_test.to_numpy(), predictions)
    tracker.log_metrics(
        parent_run_id,
        {f"test_{k}": v for k, v in test_metrics.items()} | {"best_cv_mse": best.mean_score},
    )
    timings["refit"] = time.perf_counter() - started - timings["prepare"] - timings["trials"]

    from mlflow.models import infer_signature

    signature = infer_signature(split.X_test, predictions)
    model_uri, version = tracker.log_model(
        parent_run_id,
        family.name,
        model,
        split.X_train.head(5),
        signature,
        spec.model_name,
        held_out=split.X_test,
    )
    tracker.tag_version(
        spec.model_name,
        version,
        {
            "mlpipe.search_id": search_id,
            "mlpipe.test_mse": repr(test_metrics["mse"]),
            "mlpipe.data_fingerprint": dataset.fingerprint,
        },
    )
    promotion = promote(tracker, spec.model_name, version, test_metrics["mse"], split)

    artifacts.write_results(
        out_dir,
        search_id,
        results,
        best,
        test_metrics,
        extra={
            "family": family.name,
            "data": dataset.name,
            "data_fingerprint": dataset.fingerprint,
            "cv": spec.search.cv,
            "seed": spec.seed,
            "parent_run_id": parent_run_id,
            "model_name": spec.model_name,
            "model_version": version,
            "alias": promotion.alias,
        },
    )
    from mlpipe import report, tracking

    report.write_report(out_dir / "report", results, split, predictions, model, family.name)
    tracking.download_model(model_uri, out_dir / "model")
    tracker.log_artifacts(parent_run_id, out_dir)
    tracker.end_search(parent_run_id, ok=True)
    timings["register"] = time.perf_counter() - started - sum(timings.values())
    return TuneOutcome(
        search_id=search_id,
        artifacts_path=str(out_dir),
        parent_run_id=parent_run_id,
        experiment_id=tracker.experiment_id,
        results=results,
        best=best,
        test_metrics=test_metrics,
        model_uri=model_uri,
        model_name=spec.model_name,
        promotion=promotion,
        reused=len(reused),
        timings=timings,
    )


def promote(
    tracker: Tracker, model_name: str, version: str, test_mse: float, split: Split
) -> Promotion:
    """Move ``champion`` to ``version`` only if it beats the current champion on this test split."""
    from mlpipe.tracking import load_model

    current = tracker.champion_version(model_name)
    champion_mse: float | None = None
    if current is not None and current != version:
        champion = load_model(f"models:/{model_name}/{current}")
        champion_mse = regression_metrics(
            split.y_test.to_numpy(), np.asarray(champion.predict(split.X_test)).ravel()
        )["mse"]
    alias = CHAMPION if champion_mse is None or test_mse < champion_mse else CHALLENGER
    tracker.set_alias(model_name, alias, version)
    return Promotion(version, alias, test_mse, current, champion_mse)


def run_tuning(
    spec: Spec,
    tracking_uri: str,
    observer: Observer,
    log_dir: Path,
    fresh: bool = False,
    verbose: bool = False,
    process_started: float | None = None,
) -> TuneOutcome:
    """Run the ``tune`` flow from a CLI: start the backends in parallel, then the flow.

    The Prefect ephemeral server (10-26 s here) and the MLflow store's schema set-up are started
    side by side, with their output sent to ``log_dir`` so a user's terminal shows progress only.
    """
    started = time.perf_counter()
    prepare(spec)  # bad data fails now, not after a 15 s server start
    log_dir.mkdir(parents=True, exist_ok=True)
    backends_log = log_dir / "backends.log"
    with _output_to(backends_log), ThreadPoolExecutor(2) as pool:
        prefect_ready = pool.submit(start_prefect_backend)
        mlflow_ready = pool.submit(Tracker.connect, tracking_uri, spec.experiment_name)
        mlflow_ready.result()
        api_url = prefect_ready.result()
    cold_start = time.perf_counter() - started
    if not verbose:  # after mlflow's import, which installs its own stderr handler
        _route_logs_to(log_dir / "mlpipe.log")
    workers = (os.cpu_count() or 1) if spec.n_jobs == -1 else spec.n_jobs
    runner = ProcessPoolTaskRunner(
        max_workers=workers,
        initializer=init_worker,
        initargs=(api_url, None if verbose else str(backends_log)),
    )
    token = observer_var.set(observer)
    try:
        # return_state keeps our own exceptions (UserError, TuningError) as they are
        state = tune.with_options(task_runner=runner)(  # type: ignore[arg-type]
            spec=spec.model_dump(mode="json"),
            tracking_uri=tracking_uri,
            fresh=fresh,
            return_state=True,
        )
    finally:
        observer_var.reset(token)
    outcome: TuneOutcome = state.result()  # re-raises the flow's exception
    first = started if process_started is None else process_started
    outcome.timings = {
        "process_start": started - first,
        "cold_start": cold_start,
        **outcome.timings,
        "total": time.perf_counter() - first,
    }
    return outcome


def start_prefect_backend() -> str:
    """Start Prefect's ephemeral API server unless PREFECT_API_URL names one; returns its URL."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


def init_worker(api_url: str, log_path: str | None) -> None:
    """Set up a task-runner process: talk to the flow's API server (a spawned worker would
    otherwise start an ephemeral server of its own) and keep its output in the log file."""
    os.environ["PREFECT_API_URL"] = api_url
    if log_path is not None:
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)


def _route_logs_to(path: Path) -> None:
    """Keep Prefect's and MLflow's INFO chatter (run names, state changes, registry notes) in a
    file; the flow's logs still reach the Prefect API and UI. --verbose skips this."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("prefect", "mlflow"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)]
        logger.addHandler(handler)
        logger.propagate = False


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr file descriptors (and children started meanwhile) to
    ``path``: the ephemeral server inherits them and logs there for the rest of its life."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
