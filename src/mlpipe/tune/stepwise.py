"""Searches that run in steps, each step's trials chosen from the results of the steps before:
successive halving (a step is a rung: ``halving.Rungs``) and model-based search (a step is a
batch asked of the sampler: ``tpe.Batches``).

The steps depend on results only, never on where or in which order trials ran, so the same
search can be driven three ways and gives the same trials:

- ``run_search``: one machine (any executor) runs the steps one after another, reusing every
  trial MLflow holds finished for this search (an interrupted or extended search);
- ``replay``: from logged results alone, as far as they go (an unchanged rerun, finalize);
- ``sharded.run_shard``: each shard runs its share of a step, then waits in MLflow for the
  other shards' share before it tells the step's results and asks for the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from mlpipe.search import Step, TrialConfig
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import TrialResult, Warm
from mlpipe.tune import halving, rerun, tpe
from mlpipe.tune.plan import Prepared, prepare
from mlpipe.tune.progress import NullObserver
from mlpipe.tune.steps import MODEL_WRITERS, TuneOutcome, finish, observer_var, preload, repeat
from mlpipe.tune.trials import run_trials

ELIMINATED_TAG = "mlpipe.eliminated"


class Steps(Protocol):
    """A search in steps: ``next`` gives a step's trials, ``tell`` takes their results."""

    label: str  # what a step is called: rung, batch
    total: int  # trials in the whole search

    def next(self) -> Step | None: ...
    def tell(self, results: list[TrialResult]) -> None: ...


def make_steps(spec: Spec, plan: Prepared) -> Steps:
    """The steps of the spec's search, from the start (``plan`` holds the first step)."""
    if spec.search.strategy == "halving":
        return halving.Rungs(spec, plan)
    return tpe.Batches(spec, plan)


def step_plan(plan: Prepared, step: Step) -> Prepared:
    """``plan`` with the step's trials and folds (what ``run_trials`` takes)."""
    return dataclasses.replace(plan, trials=step.trials, folds=step.folds or plan.folds)


def placed(
    result: TrialResult, trial: TrialConfig, marks: dict[str, Any] | None = None
) -> TrialResult:
    """A logged result as this run's ``trial``: its place in the search, and its step's
    ``marks`` (``Step.marks``)."""
    return dataclasses.replace(result, index=trial.index, **(marks or {}))


def replay(
    steps: Steps, logged: Mapping[str, TrialResult]
) -> tuple[list[TrialResult], Step | None]:
    """Drive ``steps`` with ``logged`` results as far as they go: the results so far, and the
    first step with a trial not logged (None: the whole search was)."""
    results: list[TrialResult] = []
    while (step := steps.next()) is not None:
        if any(t.trial_id not in logged for t in step.trials):
            return results, step
        found = [placed(logged[t.trial_id], t, step.marks) for t in step.trials]
        steps.tell(found)
        results += found
    return results, None


@contextlib.contextmanager
def kept_models(spec: Spec, plan: Prepared) -> Iterator[Warm | None]:
    """The folder a halving search keeps its candidates' models in between rungs
    (``halving.warm_models``), removed when the search ends."""
    warm = halving.warm_models(spec, plan)
    try:
        yield warm
    finally:
        if warm is not None:
            shutil.rmtree(warm.folder, ignore_errors=True)


def mark_eliminated(tracker: Tracker, results: list[TrialResult], run_ids: dict[str, str]) -> None:
    """Tag the trial runs of candidates a halving rung stopped (those in ``run_ids``)."""
    for result in results:
        if result.eliminated and result.trial_id in run_ids:
            tracker.set_tags(run_ids[result.trial_id], {ELIMINATED_TAG: "true"})


def run_search(spec: Spec, tracker: Tracker, fresh: bool) -> TuneOutcome:
    """Every step on this machine, then ``steps.finish``; a finished search is repeated
    (``steps.repeat``) as a grid's is, and a trial MLflow holds finished is not run again.
    Must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    logged = {} if fresh else tracker.gather_trials(plan.search_id, None)
    previous = {tid: result for tid, (_, result) in logged.items() if result.status == "completed"}
    # the steps MLflow holds whole are told their logged results; the run goes on from there
    steps = make_steps(spec, plan)
    results, step = replay(steps, previous)
    if step is None:  # every trial finished before: that search's outcome, if it ended
        params, name = plan.search_params(spec), spec.model_name
        earlier = rerun.find_earlier(tracker, plan.search_id, params, name, spec.scoring)
        if earlier is not None:
            observer.start(total=len(results), reused=len(results))
            observer.finish()
            return repeat(spec, plan, tracker, earlier, results, started)
    parent_run_id = tracker.start_search(plan.search_id, plan.search_params(spec), plan.search_tags)
    known = len(results) + (sum(t.trial_id in previous for t in step.trials) if step else 0)
    observer.start(total=steps.total, reused=known)
    timings = {"prepare": time.perf_counter() - started}
    preload(MODEL_WRITERS[spec.model.family])
    run_ids = {r.trial_id: tracker.log_trial(parent_run_id, plan.search_id, r) for r in results}
    mark_eliminated(tracker, results, run_ids)
    reused = len(results)
    with kept_models(spec, plan) as warm:
        while step is not None:
            found = [t for t in step.trials if t.trial_id in previous]
            done = [placed(previous[t.trial_id], t, step.marks) for t in found]
            run_ids = {r.trial_id: tracker.log_trial(parent_run_id, plan.search_id, r)
                       for r in done}  # fmt: skip
            todo = [t for t in step.trials if t.trial_id not in previous]
            computed = run_trials(spec, step_plan(plan, step), todo, tracker, parent_run_id,
                                  observer, results + done, step.marks, run_ids, warm)  # fmt: skip
            by_id = {r.trial_id: r for r in done + computed}
            step_results = [by_id[t.trial_id] for t in step.trials]
            steps.tell(step_results)
            mark_eliminated(tracker, step_results, run_ids)
            results += step_results
            reused += len(done)
            step = steps.next()
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]
    return finish(spec, plan, tracker, parent_run_id, results, reused, timings)
