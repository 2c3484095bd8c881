"""The ``tune`` Prefect flow: fan the trials out, track each in MLflow, refit, register, promote.

The only module that knows about Prefect's fan-out. The ML work is in ``search``/``trial``; MLflow
calls go through ``tracking.Tracker``. The flow takes only JSON-able parameters (the spec and the
tracking URI), so it runs the same from the CLI, a deployment or a worker.

Task runner, chosen by measurement (2 cores, the reference grid, same 27 units): a process pool
took 8.6 s, a thread pool 14.9 s. RandomForest fits hold the GIL for a good share of their
time on small tables, so threads serialise; processes do not. Hence ProcessPoolTaskRunner, except
with one worker (a thread: no process to start) and on Dask (``executor``, see ``task_runner``).
A search split across machines (``tune(shard=...)``, then ``finalize_search``) is in
``sharded``; it reuses ``prepare``, ``run_trials`` and ``finish`` from here.
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
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from mlpipe import artifacts, drift, signals
from mlpipe.data import Dataset, Split, load_dataset, split_dataset
from mlpipe.errors import DataError, TuningError, UserError
from mlpipe.models import get_family
from mlpipe.search import (
    Shard,
    TrialConfig,
    Unit,
    assign_shards,
    expand,
    make_search_id,
    make_trials,
    plan_units,
    select_best,
)
from mlpipe.spec import Spec
from mlpipe.terminal import NullObserver, Observer
from mlpipe.tracking import (
    CHALLENGER,
    CHAMPION,
    Promotion,
    Tracker,
    infer_signature,
    resolve_tracking_uri,
)
from mlpipe.trial import TrialResult, failed_results, fit_final, kfold, regression_metrics, run_unit

if TYPE_CHECKING:
    from mlpipe.sharded import ShardOutcome

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
    spec: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    fresh: bool = False,
    shard: str | None = None,
) -> TuneOutcome | ShardOutcome:
    """Tune, track, refit, register and promote the spec's search (default: the built-in spec;
    tracking URI default: MLFLOW_TRACKING_URI, else ./mlflow.db). With ``shard`` ("I/N"): run
    only that shard's trials under the search's shared parent run; ``finalize`` does the rest."""
    parsed = Spec.model_validate(spec or {})
    tracker = Tracker.connect(tracking_uri or resolve_tracking_uri(), parsed.experiment_name)
    if shard is not None:
        from mlpipe.sharded import run_shard

        return run_shard(parsed, tracker, Shard.parse(shard))
    return run_search(parsed, tracker, fresh)


@flow(name="tune-finalize", task_runner=ProcessPoolTaskRunner())  # type: ignore[arg-type]
def finalize_search(
    search_id: str,
    spec: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    wait_seconds: float = 0.0,
) -> TuneOutcome:
    """Gather every shard's trials of a sharded search from MLflow (waiting up to
    ``wait_seconds`` for the missing ones), then refit, register and promote the best."""
    from mlpipe.sharded import run_finalize

    parsed = Spec.model_validate(spec or {})
    tracker = Tracker.connect(tracking_uri or resolve_tracking_uri(), parsed.experiment_name)
    return run_finalize(parsed, tracker, search_id, wait_seconds)


@dataclass(frozen=True)
class Prepared:
    """A search made concrete: data, split, folds, trials and their ids."""

    dataset: Dataset
    split: Split
    folds: list[tuple[np.ndarray, np.ndarray]]
    trials: list[TrialConfig]
    search_id: str

    def search_params(self, spec: Spec) -> dict[str, Any]:
        """What the parent run records about the search."""
        return {
            "family": spec.model.family,
            "strategy": spec.search.strategy,
            "cv": spec.search.cv,
            "seed": spec.seed,
            "data": spec.data.source,
            "n_trials": len(self.trials),
            "test_size": spec.data.test_size,
        }

    @property
    def search_tags(self) -> dict[str, str]:
        return {
            "mlpipe.data_fingerprint": self.dataset.fingerprint,
            "mlpipe.data": self.dataset.name,
        }

    def shards(self, spec: Spec, count: int) -> list[list[Unit]]:
        """The search's units split into ``count`` shards (all trials, done or not, so every
        run of every shard agrees on who owns what)."""
        return assign_shards(plan_units(self.trials, get_family(spec.model.family)), count)


def prepare(spec: Spec, search_id: str | None = None) -> Prepared:
    """Load and check the data and expand the search; raises UserError on bad input, or if the
    spec's search is not ``search_id``."""
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
    found_id = make_search_id(
        family.name, (t.trial_id for t in trials), dataset.fingerprint, spec.search.cv
    )
    if search_id is not None and search_id != found_id:
        raise UserError(
            f"--finalize {search_id}: this spec and data give search {found_id}. Finalize with "
            "the same spec file and flags the shards ran with"
        )
    return Prepared(dataset, split, kfold(n_train, spec.search.cv), trials, found_id)


def run_search(spec: Spec, tracker: Tracker, fresh: bool) -> TuneOutcome:
    """The body of the flow: must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    out_dir = Path(spec.artifacts_dir) / plan.search_id

    previous = {} if fresh else artifacts.completed_trials(out_dir)
    reused = [previous[t.trial_id] for t in plan.trials if t.trial_id in previous]
    for result, trial in zip(
        reused, [t for t in plan.trials if t.trial_id in previous], strict=True
    ):
        result.index = trial.index  # grid order of this run decides ties
    todo = [t for t in plan.trials if t.trial_id not in previous]

    parent_run_id = tracker.start_search(plan.search_id, plan.search_params(spec), plan.search_tags)
    observer.start(total=len(plan.trials), reused=len(reused))
    results: list[TrialResult] = []
    for result in reused:
        tracker.log_trial(parent_run_id, plan.search_id, result)
        results.append(result)
    timings = {"prepare": time.perf_counter() - started}
    results += run_trials(spec, plan, todo, tracker, parent_run_id, observer, results)
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]
    return finish(spec, plan, tracker, parent_run_id, results, len(reused), timings)


def run_trials(
    spec: Spec,
    plan: Prepared,
    todo: list[TrialConfig],
    tracker: Tracker,
    parent_run_id: str,
    observer: Observer,
    earlier: list[TrialResult],
) -> list[TrialResult]:
    """Cross-validate ``todo`` on the flow's task runner, costliest unit first, logging each
    trial to MLflow as its unit finishes; a unit that raises is recorded as failed trials."""
    family = get_family(spec.model.family)
    X, y = plan.split.train_arrays
    cv_task = cross_validate.with_options(
        retries=spec.search.retries, retry_delay_seconds=spec.search.retry_delay_seconds
    )
    futures = {
        cv_task.submit(u, family.name, X, y, plan.folds, spec.seed, unit_label(u)): u
        for u in plan_units(todo, family)
    }
    results: list[TrialResult] = []
    for future in as_completed(list(futures)):
        try:
            unit_results = future.result()
        except Exception as exc:  # the trial's own error: recorded, and the search goes on
            unit_results = failed_results(futures[future], exc)
        for result in unit_results:
            tracker.log_trial(parent_run_id, plan.search_id, result)
            results.append(result)
            observer.trial_done(result, select_best(earlier + results))
    return results


def finish(
    spec: Spec,
    plan: Prepared,
    tracker: Tracker,
    parent_run_id: str,
    results: list[TrialResult],
    reused: int,
    timings: dict[str, float],
) -> TuneOutcome:
    """Pick the best trial, refit it, score it on the held-out split, register it, move the
    alias if it beats the champion, and write the results: the same for one machine or shards."""
    started = time.perf_counter()
    family = get_family(spec.model.family)
    split = plan.split
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
    timings["refit"] = time.perf_counter() - started

    # The signature and the example describe the table as the user holds it (integer columns
    # stay integers), so mlflow.pyfunc takes the table as pandas reads it.
    signature = infer_signature(plan.dataset.as_loaded(split.X_test), predictions)
    profile = training_profile(spec, model, split)
    model_uri, version = tracker.log_model(
        parent_run_id,
        family.name,
        model,
        plan.dataset.as_loaded(split.X_train.head(5)),
        signature,
        spec.model_name,
        held_out=split.X_test,
        files={drift.PROFILE_FILE: profile.to_json()},
    )
    tracker.tag_version(
        spec.model_name,
        version,
        {
            "mlpipe.search_id": plan.search_id,
            "mlpipe.test_mse": repr(test_metrics["mse"]),
            "mlpipe.data_fingerprint": plan.dataset.fingerprint,
        },
    )
    promotion = promote(tracker, spec.model_name, version, test_metrics["mse"], split)
    if promotion.promoted:
        signals.model_promoted(spec.model_name, promotion)

    out_dir = Path(spec.artifacts_dir) / plan.search_id
    artifacts.write_results(
        out_dir,
        plan.search_id,
        results,
        best,
        test_metrics,
        extra={
            "family": family.name,
            "data": plan.dataset.name,
            "data_fingerprint": plan.dataset.fingerprint,
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
    timings["register"] = time.perf_counter() - started - timings["refit"]
    return TuneOutcome(
        search_id=plan.search_id,
        artifacts_path=str(out_dir),
        parent_run_id=parent_run_id,
        experiment_id=tracker.experiment_id,
        results=results,
        best=best,
        test_metrics=test_metrics,
        model_uri=model_uri,
        model_name=spec.model_name,
        promotion=promotion,
        reused=reused,
        timings=timings,
    )


def training_profile(spec: Spec, model: Any, split: Split) -> drift.Profile:
    """The training split's features and the model's predictions on them, with the spec's
    drift thresholds: what batch runs and the server compare new inputs with."""
    monitoring = spec.monitoring
    return drift.build_profile(
        list(split.X_train.columns),
        split.X_train.to_numpy(dtype=np.float64),
        np.asarray(model.predict(split.X_train)).ravel(),
        drift.Thresholds(
            monitoring.psi_threshold,
            monitoring.ks_threshold,
            monitoring.min_rows,
            monitoring.window,
        ),
    )


def promote(
    tracker: Tracker, model_name: str, version: str, test_mse: float, split: Split
) -> Promotion:
    """Move ``champion`` to ``version`` only if it beats the current champion on this test split."""
    from mlpipe.tracking import load_model, predict_frame

    current = tracker.champion_version(model_name)
    champion_mse: float | None = None
    if current is not None and current != version:
        champion = load_model(f"models:/{model_name}/{current}")
        champion_mse = regression_metrics(
            split.y_test.to_numpy(), predict_frame(champion, split.X_test)
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
    shard: Shard | None = None,
    finalize: str | None = None,
    wait_seconds: float = 0.0,
) -> TuneOutcome | ShardOutcome:
    """Run the ``tune`` flow (the whole search, or one ``shard``) or, with ``finalize`` (a
    search id), the ``tune-finalize`` flow from a CLI: start the backends in parallel, then the
    flow on the spec's executor.

    The Prefect ephemeral server (10-26 s here) and the MLflow store's schema set-up are started
    side by side, with their output sent to ``log_dir`` so a user's terminal shows progress only.
    """
    started = time.perf_counter()
    if spec.executor.startswith("dask://") and not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            f"--executor {spec.executor}: the Dask workers report their task runs to Prefect "
            "and need a server they can reach; set PREFECT_API_URL (`mlpipe up` starts one)"
        )
    prepare(spec, finalize)  # bad data fails now, not after a 15 s server start
    log_dir.mkdir(parents=True, exist_ok=True)
    backends_log = log_dir / "backends.log"
    if not os.environ.get("PREFECT_API_URL"):
        # Both threads below touch SQLAlchemy's global mapper registry: MLflow's store runs
        # configure_mappers() while the ephemeral server's import defines Prefect's ORM classes,
        # which failed now and then ("'WorkQueue' failed to locate a name"). Define them first.
        import prefect.server.database.orm_models  # noqa: F401
    with _output_to(backends_log), ThreadPoolExecutor(2) as pool:
        prefect_ready = pool.submit(start_prefect_backend)
        mlflow_ready = pool.submit(Tracker.connect, tracking_uri, spec.experiment_name)
        mlflow_ready.result()
        api_url = prefect_ready.result()
    cold_start = time.perf_counter() - started
    if not verbose:  # after mlflow's import, which installs its own stderr handler
        _route_logs_to(log_dir / "mlpipe.log")
    token = observer_var.set(observer)
    try:
        logs = None if verbose else backends_log
        with task_runner(spec, api_url, logs, finalize is not None) as runner:
            # return_state keeps our own exceptions (UserError, TuningError) as they are
            state: Any
            if finalize is not None:
                state = finalize_search.with_options(task_runner=runner)(
                    search_id=finalize,
                    spec=spec.model_dump(mode="json"),
                    tracking_uri=tracking_uri,
                    wait_seconds=wait_seconds,
                    return_state=True,
                )
            else:
                state = tune.with_options(task_runner=runner)(
                    spec=spec.model_dump(mode="json"),
                    tracking_uri=tracking_uri,
                    fresh=fresh,
                    shard=None if shard is None else str(shard),
                    return_state=True,
                )
    finally:
        observer_var.reset(token)
    outcome: TuneOutcome | ShardOutcome = state.result()  # re-raises the flow's exception
    first = started if process_started is None else process_started
    outcome.timings = {
        "process_start": started - first,
        "cold_start": cold_start,
        **outcome.timings,
        "total": time.perf_counter() - first,
    }
    return outcome


@contextlib.contextmanager
def task_runner(
    spec: Spec, api_url: str, log_path: Path | None, finalize: bool = False
) -> Iterator[Any]:
    """The Prefect task runner of ``spec.executor``, with its workers reporting to ``api_url``
    and (unless ``log_path`` is None) writing their output there, not to the terminal:

    - ``process``: a pool of ``n_jobs`` processes on this machine (the default; one worker runs
      in this process);
    - ``dask-local``: a Dask LocalCluster of ``n_jobs`` single-threaded worker processes;
    - ``dask://HOST:PORT``: an existing Dask cluster's scheduler (workers need mlpipe installed
      and a Prefect API they can reach: set PREFECT_API_URL to a server, not the ephemeral one).
    """
    workers = (os.cpu_count() or 1) if spec.n_jobs == -1 else spec.n_jobs
    logs = None if log_path is None else str(log_path)
    if spec.executor == "process" and (workers == 1 or finalize):
        # One trial at a time (or finalize's one refit) gains nothing from another process, and
        # starting one (spawn and imports) cost 3-4 s of a shard's 15 s here: use a thread.
        yield ThreadPoolTaskRunner(max_workers=1)
        return
    if spec.executor == "process":
        yield ProcessPoolTaskRunner(
            max_workers=workers, initializer=init_worker, initargs=(api_url, logs)
        )
        return
    from prefect_dask import DaskTaskRunner

    if spec.executor.startswith("dask://"):
        yield DaskTaskRunner(address="tcp://" + spec.executor.removeprefix("dask://"))
        return
    from distributed import Client, LocalCluster

    # Worker processes inherit the environment and the output file descriptors at start.
    os.environ["PREFECT_API_URL"] = api_url
    with _output_to(log_path) if log_path else contextlib.nullcontext():
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
    try:
        with Client(cluster) as client:
            client.run(warm_worker)  # imports once per worker now, not inside the first trials
        # by address: a runner holding the live cluster object cannot be pickled with the flow
        yield DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        cluster.close()


def warm_worker() -> None:
    """Import what a trial needs (a Dask worker runs this once, before the first trial)."""
    import sklearn.ensemble  # noqa: F401

    import mlpipe.tune  # noqa: F401


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
