"""The ``tune`` and ``tune-finalize`` Prefect flows: the entrypoints deployments name.

Task runner, chosen by measurement (2 cores, the reference grid, same 27 units): a process pool
took 8.6 s, a thread pool 14.9 s. RandomForest fits hold the GIL for a good share of their
time on small tables, so threads serialise; processes do not. Hence ProcessPoolTaskRunner here
(a deployment's run); from the CLI, task runs on threads that wait on a process pool started
with the backends, one thread with one worker, and Dask's runner (``runtime.task_runner``). The
flows take only JSON-able parameters (the spec and the tracking URI), so they run the same from
the CLI, a deployment or a worker. A search split across machines (``tune(shard=...)``, then
``finalize_search``) is in ``sharded``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner

from mlpipe.search import Shard
from mlpipe.settings import Settings
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.tune import publish, steps, stepwise
from mlpipe.tune.sharded import BARRIER_SECONDS, ShardOutcome, run_finalize, run_shard
from mlpipe.tune.steps import TuneOutcome


@flow(name="tune", task_runner=ProcessPoolTaskRunner())  # type: ignore[arg-type]
def tune(
    spec: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    fresh: bool = False,
    shard: str | None = None,
    wait_seconds: float | None = None,
) -> TuneOutcome | ShardOutcome:
    """Tune, track, refit, register and promote the spec's search (default: the built-in spec;
    tracking URI default: MLFLOW_TRACKING_URI, else ./mlflow.db). With ``shard`` ("I/N"): run
    only that shard's trials under the search's shared parent run; ``finalize`` does the rest
    (a halving or tpe shard waits up to ``wait_seconds`` at each step for the other shards;
    default an hour)."""
    parsed = Spec.model_validate(spec or {})
    uri = tracking_uri or Settings.from_env().tracking_uri
    tracker = Tracker.connect(uri, parsed.experiment_name)
    if shard is not None:
        wait = BARRIER_SECONDS if wait_seconds is None else wait_seconds
        return run_shard(parsed, tracker, Shard.parse(shard), wait)
    stepped = parsed.search.stepwise
    outcome = (stepwise.run_search if stepped else steps.run_search)(parsed, tracker, fresh)
    publish.to_flow_run(outcome, uri)
    return outcome


@flow(name="tune-finalize", task_runner=ProcessPoolTaskRunner())  # type: ignore[arg-type]
def finalize_search(
    search_id: str,
    spec: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    wait_seconds: float = 0.0,
) -> TuneOutcome:
    """Gather every shard's trials of a sharded search from MLflow (waiting up to
    ``wait_seconds`` for the missing ones), then refit, register and promote the best."""
    parsed = Spec.model_validate(spec or {})
    uri = tracking_uri or Settings.from_env().tracking_uri
    tracker = Tracker.connect(uri, parsed.experiment_name)
    outcome = run_finalize(parsed, tracker, search_id, wait_seconds)
    publish.to_flow_run(outcome, uri)
    return outcome
