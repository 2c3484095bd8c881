"""A search split across machines: ``mlpipe train --shard I/N`` on N processes or pods (a
Kubernetes Indexed Job), then ``mlpipe train --finalize SEARCH_ID`` once.

No coordinator: every shard expands the same spec into the same trials and the same cost-balanced
shards (``search.assign_shards``), so each knows its part. The shared MLflow tracking server is the
only meeting point:

- the shards log their trials under one parent run, tagged ``mlpipe.shards=N`` (found or created
  by whichever shard comes first: ``Tracker.attach_search``), each trial's result as a tag;
- a shard that is rerun (a pod retried after a kill) skips the trials MLflow already holds;
- finalize gathers the trials, names the shards still missing, then refits, registers and promotes
  exactly as a single-machine run does (``tune.finish``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpipe.errors import TuningError, UserError
from mlpipe.search import Shard, TrialConfig, Unit
from mlpipe.spec import Spec
from mlpipe.tracking import SHARDS_TAG, Tracker
from mlpipe.trial import TrialResult
from mlpipe.tune import artifacts
from mlpipe.tune.plan import prepare
from mlpipe.tune.progress import NullObserver
from mlpipe.tune.steps import TuneOutcome, finish, observer_var
from mlpipe.tune.trials import run_trials

SHARD_TAG = "mlpipe.shard.{index}"  # on the parent: "running", "completed: ...", "failed: ..."
POLL_SECONDS = 2.0


@dataclass
class ShardOutcome:
    """What one shard did (what the CLI prints)."""

    search_id: str
    shard: Shard
    parent_run_id: str
    experiment_id: str
    results: list[TrialResult]
    reused: int
    expected_share: float  # of the whole search's expected cost
    results_path: str
    fit_seconds: float  # of the trials this run computed (reused ones excluded)
    timings: dict[str, float] = field(default_factory=dict)


def run_shard(spec: Spec, tracker: Tracker, shard: Shard) -> ShardOutcome:
    """Cross-validate this shard's trials under the search's shared parent run, skipping those
    MLflow already holds; must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    shards = plan.shards(spec, shard.count)
    mine = shards[shard.index]
    parent_run_id = tracker.attach_search(
        plan.search_id, plan.search_params(spec), plan.search_tags, shard.count
    )
    tag = SHARD_TAG.format(index=shard.index)
    tracker.set_tags(parent_run_id, {tag: "running"})
    try:
        logged = tracker.gather_trials(plan.search_id, [parent_run_id])
        trials = [t for unit in mine for t in unit.trials]
        reused = [
            logged[t.trial_id][1]
            for t in trials
            if t.trial_id in logged and logged[t.trial_id][1].status == "completed"
        ]
        done = {r.trial_id for r in reused}
        todo = [t for t in trials if t.trial_id not in done]
        observer.start(total=len(trials), reused=len(reused))
        timings = {"prepare": time.perf_counter() - started}
        computed = run_trials(spec, plan, todo, tracker, parent_run_id, observer, reused)
        results = reused + computed
        observer.finish()
        timings["trials"] = time.perf_counter() - started - timings["prepare"]
    except BaseException as exc:
        tracker.set_tags(parent_run_id, {tag: f"failed: {type(exc).__name__}: {exc}"[:4000]})
        raise
    total_cost = sum(u.cost for part in shards for u in part)
    outcome = ShardOutcome(
        search_id=plan.search_id,
        shard=shard,
        parent_run_id=parent_run_id,
        experiment_id=tracker.experiment_id,
        results=sorted(results, key=lambda r: r.index),
        reused=len(reused),
        expected_share=sum(u.cost for u in mine) / total_cost if total_cost else 0.0,
        results_path="",
        fit_seconds=sum(r.fit_seconds for r in computed),
        timings=timings,
    )
    path = _write_shard_results(spec, outcome, mine)
    outcome.results_path = str(path)
    tracker.log_artifact(parent_run_id, path, "shards")
    failed = sum(r.status != "completed" for r in results)
    tracker.set_tags(parent_run_id, {tag: f"completed: {len(results)} trials, {failed} failed"})
    return outcome


def _write_shard_results(spec: Spec, outcome: ShardOutcome, units: list[Unit]) -> Path:
    """``<artifacts_dir>/<search_id>/shards/shard-I-of-N.json``: this shard's trials and costs."""
    shard = outcome.shard
    path = (
        Path(spec.artifacts_dir)
        / outcome.search_id
        / "shards"
        / f"shard-{shard.index}-of-{shard.count}.json"
    )
    artifacts.write_json(
        path,
        {
            "schema_version": artifacts.SCHEMA_VERSION,
            "search_id": outcome.search_id,
            "shard": str(shard),
            "parent_run_id": outcome.parent_run_id,
            "expected_cost_share": outcome.expected_share,
            "units": len(units),
            "reused": outcome.reused,
            "fit_seconds": outcome.fit_seconds,
            "timings": outcome.timings,
            "trials": [r.to_json() for r in outcome.results],
        },
    )
    return path


def run_finalize(spec: Spec, tracker: Tracker, search_id: str, wait_seconds: float) -> TuneOutcome:
    """Gather every shard's trials (waiting up to ``wait_seconds``), fold the parent runs of
    shards that raced into one, then refit, register and promote as a single machine does."""
    started = time.perf_counter()
    plan = prepare(spec, search_id)
    deadline = time.monotonic() + wait_seconds
    while True:
        parents = tracker.open_searches(search_id)
        if parents:
            count = _shard_count(parents, search_id)
            logged = tracker.gather_trials(search_id, [p.info.run_id for p in parents])
            missing = _missing(plan.shards(spec, count), logged)
            if not missing:
                break
        if time.monotonic() >= deadline:
            raise _not_ready(tracker, search_id, parents, missing if parents else {})
        time.sleep(POLL_SECONDS)

    parent_run_id = str(parents[0].info.run_id)
    for run in parents[1:]:  # shards that started at once and each kept its own parent
        tracker.adopt(parent_run_id, run.info.run_id)
    results = [logged[t.trial_id][1] for t in plan.trials]
    for result, trial in zip(results, plan.trials, strict=True):
        result.index = trial.index
    timings = {"gather": time.perf_counter() - started}
    return finish(spec, plan, tracker, parent_run_id, results, len(results), timings)


def _shard_count(parents: list[Any], search_id: str) -> int:
    counts = sorted({int(p.data.tags[SHARDS_TAG]) for p in parents})
    if len(counts) > 1:
        raise UserError(
            f"search {search_id} has open sharded runs for {' and '.join(map(str, counts))} "
            "shards; finish one layout (its parent runs: "
            + ", ".join(p.info.run_id for p in parents)
            + ") or delete the others in MLflow"
        )
    return counts[0]


def _missing(
    shards: list[list[Unit]], logged: dict[str, tuple[str, TrialResult]]
) -> dict[int, list[TrialConfig]]:
    """Per shard index, the trials MLflow does not hold yet."""
    missing: dict[int, list[TrialConfig]] = {}
    for index, units in enumerate(shards):
        absent = [t for u in units for t in u.trials if t.trial_id not in logged]
        if absent:
            missing[index] = absent
    return missing


def _not_ready(
    tracker: Tracker,
    search_id: str,
    parents: list[Any],
    missing: dict[int, list[TrialConfig]],
) -> TuningError:
    """The error naming each shard that has not delivered, with what its last run said."""
    where = f"experiment {tracker.experiment_id} of {tracker.client.tracking_uri}"
    if not parents:
        return TuningError(
            f"search {search_id}: no shard has started in {where}. Run `mlpipe train --shard I/N` "
            "with the same spec for I = 0..N-1 first (or wait: --wait SECONDS)"
        )
    count = int(parents[0].data.tags[SHARDS_TAG])
    lines = []
    for index, trials in sorted(missing.items()):
        said = next(
            (
                p.data.tags[SHARD_TAG.format(index=index)]
                for p in parents
                if SHARD_TAG.format(index=index) in p.data.tags
            ),
            "never started",
        )
        lines.append(f"  shard {index}/{count}: {len(trials)} trial(s) missing; it says: {said}")
    return TuningError(
        f"search {search_id}: {len(missing)} of {count} shard(s) not finished in {where}:\n"
        + "\n".join(lines)
        + "\nRerun those shards (`mlpipe train --shard I/N`, same spec), then finalize again"
    )
