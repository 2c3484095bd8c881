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
from mlpipe.search import Shard, Step, TrialConfig, Unit, assign_shards, plan_units, select_best
from mlpipe.spec import Spec
from mlpipe.tracking import SHARDS_TAG, Tracker
from mlpipe.trial import TrialResult, Warm
from mlpipe.tune import artifacts, stepwise
from mlpipe.tune.plan import Prepared, prepare
from mlpipe.tune.progress import NullObserver, Observer
from mlpipe.tune.steps import TuneOutcome, finish, observer_var
from mlpipe.tune.trials import run_trials

SHARD_TAG = "mlpipe.shard.{index}"  # on the parent: "running", "completed: ...", "failed: ..."
POLL_SECONDS = 2.0
# a halving or tpe shard waits at each step for the others (each poll: one MLflow search)
BARRIER_SECONDS = 3600.0
BARRIER_POLL_SECONDS = 0.5


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


def run_shard(
    spec: Spec, tracker: Tracker, shard: Shard, wait_seconds: float = BARRIER_SECONDS
) -> ShardOutcome:
    """Cross-validate this shard's trials under the search's shared parent run, skipping those
    MLflow already holds; must run inside a flow run (it submits tasks). A halving or tpe
    search runs step by step: this shard's share of a step, then a wait of up to
    ``wait_seconds`` for the other shards' share (``_step_by_step``)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    parent_run_id = tracker.attach_search(
        plan.search_id, plan.search_params(spec), plan.search_tags, shard.count
    )
    tag = SHARD_TAG.format(index=shard.index)
    tracker.set_tags(parent_run_id, {tag: "running"})
    part = Part(parent_run_id)
    timings = {"prepare": time.perf_counter() - started}
    try:
        if spec.search.stepwise:
            _step_by_step(spec, plan, tracker, shard, part, observer, wait_seconds)
        else:
            _grid_share(spec, plan, tracker, shard, part, observer)
        observer.finish()
        timings["trials"] = time.perf_counter() - started - timings["prepare"]
    except BaseException as exc:
        tracker.set_tags(parent_run_id, {tag: f"failed: {type(exc).__name__}: {exc}"[:4000]})
        raise
    results = part.reused + part.computed
    outcome = ShardOutcome(
        search_id=plan.search_id,
        shard=shard,
        parent_run_id=parent_run_id,
        experiment_id=tracker.experiment_id,
        results=sorted(results, key=lambda r: r.index),
        reused=len(part.reused),
        expected_share=part.cost / part.total_cost if part.total_cost else 0.0,
        results_path="",
        fit_seconds=sum(r.fit_seconds for r in part.computed),
        timings=timings,
    )
    path = _write_shard_results(spec, outcome, part.units)
    outcome.results_path = str(path)
    tracker.log_artifact(parent_run_id, path, "shards")
    failed = sum(r.status != "completed" for r in results)
    tracker.set_tags(parent_run_id, {tag: f"completed: {len(results)} trials, {failed} failed"})
    return outcome


@dataclass
class Part:
    """What one shard ran: its trials' results (reused from MLflow or computed), its units and
    their expected cost against the whole search's."""

    parent_run_id: str
    reused: list[TrialResult] = field(default_factory=list)
    computed: list[TrialResult] = field(default_factory=list)
    units: int = 0
    cost: float = 0.0
    total_cost: float = 0.0

    def run(
        self,
        spec: Spec,
        plan: Prepared,
        tracker: Tracker,
        logged: dict[str, tuple[str, TrialResult]],
        shards: list[list[Unit]],
        index: int,
        observer: Observer,
        step: Step | None = None,
        warm: Warm | None = None,
    ) -> None:
        """Run shard ``index``'s units of ``shards`` (a step's, if given), skipping trials
        ``logged`` finished (``_logged``)."""
        trials = [t for unit in shards[index] for t in unit.trials]
        marks = None if step is None else step.marks
        done = [stepwise.placed(logged[t.trial_id][1], t, marks) for t in trials
                if _finished(logged, t)]  # fmt: skip
        ids = {r.trial_id for r in done}
        todo = [t for t in trials if t.trial_id not in ids]
        here = plan if step is None else stepwise.step_plan(plan, step)
        earlier = self.reused + self.computed + done
        computed = run_trials(spec, here, todo, tracker, self.parent_run_id, observer, earlier,
                              marks, warm=warm)  # fmt: skip
        self.reused += done
        self.computed += computed
        self.units += len(shards[index])
        self.cost += sum(u.cost for u in shards[index])
        self.total_cost += sum(u.cost for part in shards for u in part)


def _grid_share(
    spec: Spec, plan: Prepared, tracker: Tracker, shard: Shard, part: Part, observer: Observer
) -> None:
    """A grid's or random search's shard: its units of the whole search, at once."""
    shards = plan.shards(spec, shard.count)
    mine = [t for unit in shards[shard.index] for t in unit.trials]
    logged = _logged(tracker, plan.search_id, shard.count, part.parent_run_id)
    observer.start(total=len(mine), reused=sum(_finished(logged, t) for t in mine))
    part.run(spec, plan, tracker, logged, shards, shard.index, observer)


def _step_by_step(
    spec: Spec,
    plan: Prepared,
    tracker: Tracker,
    shard: Shard,
    part: Part,
    observer: Observer,
    wait_seconds: float,
) -> None:
    """A halving or tpe search's shard: every shard walks the same steps; of each it runs its
    share (the step's units split as a grid's are), then waits until MLflow holds every trial
    of the step, tells the step's results (all shards tell the same, in the step's order) and
    goes on. The progress counts the whole search's trials."""
    family = spec.family
    steps = stepwise.make_steps(spec, plan)
    observer.start(total=steps.total, reused=0)
    with stepwise.kept_models(spec, plan) as warm:
        while (step := steps.next()) is not None:
            shards = assign_shards(plan_units(step.trials, family), shard.count)
            before = len(part.computed)
            logged = _logged(tracker, plan.search_id, shard.count, part.parent_run_id)
            part.run(spec, plan, tracker, logged, shards, shard.index, observer, step, warm)
            logged = _barrier(tracker, plan.search_id, shard, part.parent_run_id, step, shards,
                              wait_seconds, steps.label)  # fmt: skip
            results = [stepwise.placed(logged[t.trial_id][1], t, step.marks) for t in step.trials]
            steps.tell(results)
            mine = {t.trial_id for unit in shards[shard.index] for t in unit.trials}
            stepwise.mark_eliminated(tracker, results, {tid: logged[tid][0] for tid in mine})
            ran = {r.trial_id for r in part.computed[before:]}
            for result in results:  # the other shards' trials and those reused, in the progress
                if result.trial_id not in ran:
                    observer.trial_done(result, select_best(results))


def _logged(
    tracker: Tracker, search_id: str, count: int, parent_run_id: str
) -> dict[str, tuple[str, TrialResult]]:
    """The trials logged under the search's open parent runs for ``count`` shards (more than
    one when shards raced to create it) and ``parent_run_id``."""
    parents = {str(p.info.run_id) for p in tracker.open_searches(search_id, count)}
    return tracker.gather_trials(search_id, sorted(parents | {parent_run_id}))


def _finished(logged: dict[str, tuple[str, TrialResult]], trial: TrialConfig) -> bool:
    return trial.trial_id in logged and logged[trial.trial_id][1].status == "completed"


def _barrier(
    tracker: Tracker,
    search_id: str,
    shard: Shard,
    parent_run_id: str,
    step: Step,
    shards: list[list[Unit]],
    wait_seconds: float,
    label: str,
) -> dict[str, tuple[str, TrialResult]]:
    """Wait until MLflow holds every trial of ``step`` (polling); the trials logged. Raises
    TuningError naming the shards still missing after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while True:
        logged = _logged(tracker, search_id, shard.count, parent_run_id)
        missing = _missing(shards, logged)
        if not missing:
            return logged
        if time.monotonic() >= deadline:
            parents = tracker.open_searches(search_id, shard.count)
            error = _not_ready(tracker, search_id, parents, missing, f"{label} {step.number}")
            raise TuningError(
                f"{error}\nEvery shard of a stepwise search must run at once (a Job's "
                f"parallelism = its completions); shard {shard} waited {wait_seconds:g} s "
                "(--wait SECONDS)"
            )
        time.sleep(BARRIER_POLL_SECONDS)


def _write_shard_results(spec: Spec, outcome: ShardOutcome, units: int) -> Path:
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
            "units": units,
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
            results, missing, where = _collected(spec, plan, logged, count)
            if not missing:
                break
        if time.monotonic() >= deadline:
            raise _not_ready(tracker, search_id, parents, missing if parents else {}, where)
        time.sleep(POLL_SECONDS)

    parent_run_id = str(parents[0].info.run_id)
    for run in parents[1:]:  # shards that started at once and each kept its own parent
        tracker.adopt(parent_run_id, run.info.run_id)
    timings = {"gather": time.perf_counter() - started}
    return finish(spec, plan, tracker, parent_run_id, results, len(results), timings)


def _collected(
    spec: Spec, plan: Prepared, logged: dict[str, tuple[str, TrialResult]], count: int
) -> tuple[list[TrialResult], dict[int, list[TrialConfig]], str]:
    """The search's results from the logged trials, the trials still missing by shard, and
    where the missing ones are (a stepwise search's step: it replays the steps as far as the
    logged results go, and its later steps are not known yet)."""
    if not spec.search.stepwise:
        results = [stepwise.placed(logged[t.trial_id][1], t) for t in plan.trials
                   if t.trial_id in logged]  # fmt: skip
        return results, _missing(plan.shards(spec, count), logged), ""
    steps = stepwise.make_steps(spec, plan)
    results, step = stepwise.replay(steps, {tid: result for tid, (_, result) in logged.items()})
    if step is None:
        return results, {}, ""
    shards = assign_shards(plan_units(step.trials, spec.family), count)
    return results, _missing(shards, logged), f"{steps.label} {step.number}"


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
    where: str = "",
) -> TuningError:
    """The error naming each shard that has not delivered, with what its last run said."""
    place = f"experiment {tracker.experiment_id} of {tracker.client.tracking_uri}"
    if not parents:
        return TuningError(
            f"search {search_id}: no shard has started in {place}. Run `mlpipe train --shard I/N` "
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
    step = f" ({where})" if where else ""
    return TuningError(
        f"search {search_id}{step}: {len(missing)} of {count} shard(s) not finished in "
        f"{place}:\n"
        + "\n".join(lines)
        + "\nRerun those shards (`mlpipe train --shard I/N`, same spec), then finalize again"
    )
