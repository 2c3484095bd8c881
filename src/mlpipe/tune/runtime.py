"""Running a tune flow from a command: the backends (Prefect's ephemeral server, the MLflow
store) started side by side, the task runner of the spec's executor, and the processes' output
and logs routed to files so a user's terminal shows progress only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from mlpipe.errors import UserError
from mlpipe.processes import output_to_file
from mlpipe.search import Shard, plan_units
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import warm_up
from mlpipe.tune import stepwise
from mlpipe.tune.flows import finalize_search, tune
from mlpipe.tune.plan import pending_trials, prepare
from mlpipe.tune.progress import Observer
from mlpipe.tune.sharded import ShardOutcome
from mlpipe.tune.steps import TuneOutcome, observer_var
from mlpipe.tune.trials import Compute, compute_var


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
    wait_seconds: float | None = None,
    prefect_api_url: str | None = None,
) -> TuneOutcome | ShardOutcome:
    """Run the ``tune`` flow (the whole search, or one ``shard``) or, with ``finalize`` (a
    search id), the ``tune-finalize`` flow from a CLI: start the backends in parallel, then the
    flow on the spec's executor.

    The Prefect ephemeral server (10-26 s here) and the MLflow store's schema set-up are started
    side by side, with their output sent to ``log_dir`` so a user's terminal shows progress only.
    ``prefect_api_url`` is the server the environment names (None: the ephemeral one).
    """
    started = time.perf_counter()
    if spec.executor.startswith("dask://") and not prefect_api_url:
        raise UserError(
            f"--executor {spec.executor}: the Dask workers report their task runs to Prefect "
            "and need a server they can reach; set PREFECT_API_URL (`mlpipe up` starts one)"
        )
    plan = prepare(spec, finalize)  # bad data fails now, not after a 15 s server start
    units = len(plan_units(plan.trials, spec.family))
    log_dir.mkdir(parents=True, exist_ok=True)
    backends_log = log_dir / "backends.log"
    logs = None if verbose else backends_log
    with contextlib.ExitStack() as stack:
        # the model work's processes start (and import), and begin the search's units, while
        # the backends start
        compute = stack.enter_context(compute_pool(spec, units, finalize is not None, logs))
        if compute is not None and shard is None:  # a shard learns its part from MLflow
            family = spec.family
            _, todo = pending_trials(spec, plan, fresh)
            X, y = plan.split.train_arrays
            # halving's first rung keeps its models for the next (the flow removes them)
            warm = stack.enter_context(stepwise.kept_models(spec, plan))
            compute.start(plan_units(todo, family), family.key, X, y, plan.folds, spec.seed,
                          warm)  # fmt: skip
        with _output_to(backends_log), ThreadPoolExecutor(2) as pool:
            prefect_ready = pool.submit(start_prefect_backend, prefect_api_url)
            mlflow_ready = pool.submit(Tracker.connect, tracking_uri, spec.experiment_name)
            mlflow_ready.result()
            api_url = prefect_ready.result()
        cold_start = time.perf_counter() - started
        # the flow's client and its task runs report there (Prefect would otherwise start an
        # ephemeral server of its own: it reads its settings, not this process's environment)
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        if not verbose:  # after mlflow's import, which installs its own stderr handler
            _route_logs_to(log_dir / "mlpipe.log")
        runner = stack.enter_context(task_runner(spec, api_url, logs, finalize is not None, units))
        state = _run_flow(runner, compute, observer, spec, tracking_uri, fresh, shard, finalize,
                          wait_seconds)  # fmt: skip
    outcome: TuneOutcome | ShardOutcome = state.result()  # re-raises the flow's exception
    first = started if process_started is None else process_started
    outcome.timings = {
        "process_start": started - first,
        "cold_start": cold_start,
        **outcome.timings,
        "total": time.perf_counter() - first,
    }
    return outcome


def _run_flow(
    runner: Any,
    compute: Compute | None,
    observer: Observer,
    spec: Spec,
    tracking_uri: str,
    fresh: bool,
    shard: Shard | None,
    finalize: str | None,
    wait_seconds: float | None,
) -> Any:
    """The flow's final state (its exception kept as it is), run on ``runner``."""
    tokens = observer_var.set(observer), compute_var.set(compute)
    try:
        # return_state keeps our own exceptions (UserError, TuningError) as they are
        if finalize is not None:
            return finalize_search.with_options(task_runner=runner)(
                search_id=finalize,
                spec=spec.model_dump(mode="json"),
                tracking_uri=tracking_uri,
                wait_seconds=wait_seconds or 0.0,
                return_state=True,
            )
        return tune.with_options(task_runner=runner)(
            spec=spec.model_dump(mode="json"),
            tracking_uri=tracking_uri,
            fresh=fresh,
            shard=None if shard is None else str(shard),
            wait_seconds=wait_seconds,
            return_state=True,
        )
    finally:
        observer_var.reset(tokens[0])
        compute_var.reset(tokens[1])


@contextlib.contextmanager
def task_runner(
    spec: Spec,
    api_url: str,
    log_path: Path | None,
    finalize: bool = False,
    units: int | None = None,
) -> Iterator[Any]:
    """The Prefect task runner of ``spec.executor``, with its workers reporting to ``api_url``
    and (unless ``log_path`` is None) writing their output there, not to the terminal:

    - ``process``: ``n_jobs`` threads, each running a task that waits on ``compute_pool``'s
      processes on this machine (the default; with one worker, the thread computes itself);
    - ``dask-local``: a Dask LocalCluster of ``n_jobs`` single-threaded worker processes;
    - ``dask://HOST:PORT``: an existing Dask cluster's scheduler (workers need mlpipe installed
      and a Prefect API they can reach: set PREFECT_API_URL to a server, not the ephemeral one).
    """
    workers = pool_size(spec, units)
    if spec.executor == "process":
        # Task runs on threads: each waits on the compute pool (``compute_pool``), or with one
        # worker (or finalize's one refit) computes itself, as starting a process (spawn and
        # imports) cost 3-4 s of a shard's 15 s here.
        yield ThreadPoolTaskRunner(max_workers=1 if finalize else workers)
        return
    from prefect_dask import DaskTaskRunner

    if spec.executor.startswith("dask://"):
        yield DaskTaskRunner(address="tcp://" + spec.executor.removeprefix("dask://"))
        return
    from distributed import Client, LocalCluster

    # Worker processes get the API's URL from their nanny and inherit the output file
    # descriptors at start.
    with _output_to(log_path) if log_path else contextlib.nullcontext():
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            env={"PREFECT_API_URL": api_url},
        )
    try:
        with Client(cluster) as client:
            # imports once per worker now, not inside the first trials
            client.run(warm_up, spec.family.key)
        # by address: a runner holding the live cluster object cannot be pickled with the flow
        yield DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        cluster.close()


@contextlib.contextmanager
def compute_pool(
    spec: Spec, units: int, finalize: bool, log_path: Path | None
) -> Iterator[Compute | None]:
    """The process pool a search's model work runs in on this machine: executor ``process``
    with more than one worker (None otherwise). Its workers start at once, each importing what
    a trial needs, so that happens while the backends start, not in the first trials."""
    workers = pool_size(spec, units)
    if spec.executor != "process" or workers == 1 or finalize:
        yield None
        return
    import multiprocessing

    # spawn, as Prefect's own process pool: this process already runs threads
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=output_to_file,
        initargs=(None if log_path is None else str(log_path),),
    )
    try:
        for _ in range(workers):  # none is idle yet, so each submit starts one more process
            pool.submit(warm_up, spec.family.key)
        yield Compute(pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pool_size(spec: Spec, units: int | None) -> int:
    """How many trials run at once: ``n_jobs`` (-1: the cores), never more than units of work."""
    workers = (os.cpu_count() or 1) if spec.n_jobs == -1 else spec.n_jobs
    return workers if units is None else max(1, min(workers, units))


def start_prefect_backend(api_url: str | None = None) -> str:
    """Start Prefect's ephemeral API server unless ``api_url`` or Prefect's settings (its
    profile, read in this thread) name one; returns its URL."""
    from prefect.settings import get_current_settings

    url = api_url or get_current_settings().api.url
    if url:
        return str(url)
    from mlpipe.tune import ephemeral

    return ephemeral.start()


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
