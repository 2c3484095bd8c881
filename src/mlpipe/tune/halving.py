"""Successive halving, rung by rung, as scikit-learn's ``HalvingGridSearchCV`` and
``HalvingRandomSearchCV`` run it, with every rung's trials cross-validated as Prefect tasks and
tracked in MLflow like any search's.

Rung 0 evaluates every candidate with the fewest resources; each later rung keeps the best
``ceil(n / factor)`` and gives them ``factor`` times the resources (``search.halving_schedule``,
``search.top_k``). The resource is ``n_samples`` (each fold's train and test rows subsampled
with ``sklearn.utils.resample``, seeded as scikit-learn seeds it) or the family's size parameter
(``n_estimators``: the candidates get that many trees). The best is the best of the last rung.
Each rung's trials are ordinary trials with the rung, its resources and whether the candidate
was eliminated there recorded (``TrialResult``; MLflow tags ``mlpipe.rung``, ``mlpipe.resources``,
``mlpipe.eliminated``); a rerun reuses every trial it finds finished, rung by rung.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpipe.search import (
    HalvingSchedule,
    TrialConfig,
    expand,
    halving_schedule,
    make_trial_id,
    top_k,
)
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import TrialResult, kfold
from mlpipe.tune.progress import Observer

if TYPE_CHECKING:
    from mlpipe.tune.plan import Prepared
    from mlpipe.tune.steps import TuneOutcome

Folds = list[tuple[np.ndarray, np.ndarray]]
SMALLEST_PER_FOLD = 2  # scikit-learn's "smallest" n_samples: 2 rows per fold (a regressor)


def candidates(spec: Spec, n_train: int) -> list[dict[str, Any]]:
    """The first rung's candidates: the grid, or a seeded draw of ``n_trials`` (default, as
    scikit-learn's "exhaust": max_resources // min_resources of them)."""
    search = spec.search
    if search.candidates == "grid":
        return expand(spec.search_space, "grid", spec.seed)
    n = search.n_trials or max_resources(spec, n_train) // smallest(spec, n_train)
    return expand(spec.search_space, "random", spec.seed, n)


def smallest(spec: Spec, n_train: int) -> int:
    """The least resources a rung may get: an int ``min_resources``, else scikit-learn's
    "smallest" (2 rows per fold for n_samples, 1 for a size parameter)."""
    search = spec.search
    if isinstance(search.min_resources, int):
        return search.min_resources
    return SMALLEST_PER_FOLD * search.cv if search.resource == "n_samples" else 1


def max_resources(spec: Spec, n_train: int) -> int:
    return spec.search.max_resources or n_train


def schedule(spec: Spec, n_train: int, n_candidates: int) -> HalvingSchedule:
    search = spec.search
    top, low = max_resources(spec, n_train), smallest(spec, n_train)
    if low > top:
        from mlpipe.errors import SpecError

        raise SpecError(
            f"search.min_resources: {low} is larger than the {top} the last rung may get "
            f"({search.resource})"
        )
    return halving_schedule(
        n_candidates, search.factor, low, top, search.first_resources, search.aggressive_elimination
    )


def rung_trials(
    spec: Spec,
    fingerprint: str,
    configs: list[dict[str, Any]],
    rung: int,
    resources: int,
    first: int,
) -> list[TrialConfig]:
    """One rung's trials, numbered on from ``first`` (scikit-learn's cv_results_ rows). The
    size resource is in the params; n_samples is in the id (the params are the candidate's)."""
    family, search = spec.model.family, spec.search
    trials = []
    for offset, config in enumerate(configs):
        if search.resource == "n_samples":
            params, marked = dict(config), {**config, "__n_samples__": resources}
        else:
            params = marked = {**config, search.resource: resources}
        trial_id = make_trial_id(family, marked, fingerprint, search.cv, spec.seed)
        trials.append(TrialConfig(trial_id, first + offset, params))
    return trials


def rung_folds(spec: Spec, folds: Folds, resources: int, n_train: int) -> Folds:
    """The folds of a rung: for n_samples, each fold's train and test rows subsampled to
    ``resources / n_train`` of them, as ``_SubsampleMetaSplitter`` does (seeded by the spec)."""
    if spec.search.resource != "n_samples":
        return folds
    from sklearn.utils import resample

    fraction = resources / n_train

    def part(rows: np.ndarray) -> np.ndarray:
        n = int(fraction * len(rows))
        return np.asarray(resample(rows, replace=False, random_state=spec.seed, n_samples=n))

    return [(part(train), part(test)) for train, test in folds]


def first_rung(
    spec: Spec, fingerprint: str, folds: Folds, n_train: int
) -> tuple[list[TrialConfig], Folds, str]:
    """Rung 0's trials and folds (what ``prepare`` plans and may start early), and a key of the
    halving settings for the search id."""
    configs = candidates(spec, n_train)
    plan = schedule(spec, n_train, len(configs))
    trials = rung_trials(spec, fingerprint, configs, 0, plan.resources[0], 0)
    search = spec.search
    key = (
        f"halving:{search.resource}:{search.factor}:{search.first_resources}:"
        f"{max_resources(spec, n_train)}:{search.aggressive_elimination}"
    )
    return trials, rung_folds(spec, folds, plan.resources[0], n_train), key


def total_trials(spec: Spec, plan: Prepared) -> int:
    n_train = len(plan.split.y_train)
    return sum(schedule(spec, n_train, len(plan.trials)).candidates)


def run_search(
    spec: Spec, plan: Prepared, tracker: Tracker, fresh: bool, observer: Observer, started: float
) -> TuneOutcome:
    """Successive halving's rungs, then ``steps.finish`` as for any search; a finished search
    is repeated (``steps.repeat``), as a grid's is."""
    from mlpipe.tune import artifacts, rerun
    from mlpipe.tune.steps import MODEL_WRITERS, finish, preload, repeat

    out_dir = Path(spec.artifacts_dir) / plan.search_id
    previous = {} if fresh else artifacts.completed_trials(out_dir)
    total = total_trials(spec, plan)
    if len(previous) == total:  # a finished search: its outcome, nothing logged again
        earlier = rerun.find_earlier(
            tracker, plan.search_id, plan.search_params(spec), spec.model_name
        )
        if earlier is not None:
            observer.start(total=total, reused=total)
            observer.finish()
            return repeat(spec, plan, tracker, earlier, list(previous.values()), started)
    parent_run_id = tracker.start_search(plan.search_id, plan.search_params(spec), plan.search_tags)
    observer.start(total=total, reused=0)
    timings = {"prepare": time.perf_counter() - started}
    preload(MODEL_WRITERS[spec.model.family])
    results, reused = run_halving(spec, plan, tracker, parent_run_id, observer, previous)
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]
    return finish(spec, plan, tracker, parent_run_id, results, reused, timings)


def run_halving(
    spec: Spec,
    plan: Prepared,
    tracker: Tracker,
    parent_run_id: str,
    observer: Observer,
    previous: dict[str, TrialResult],
) -> tuple[list[TrialResult], int]:
    """Every rung of the search (``plan`` holds rung 0): its trials, and how many were reused."""
    from mlpipe.tune.trials import run_trials

    n_train = len(plan.split.y_train)
    rungs = schedule(spec, n_train, len(plan.trials))
    configs = [_candidate(spec, t.params) for t in plan.trials]
    full_folds = kfold(n_train, spec.search.cv)
    results: list[TrialResult] = []
    reused = 0
    first = 0
    for number, resources in enumerate(rungs.resources):
        if number == 0:
            rung_plan = plan
        else:
            trials = rung_trials(spec, plan.dataset.fingerprint, configs, number, resources, first)
            folds = rung_folds(spec, full_folds, resources, n_train)
            rung_plan = dataclasses.replace(plan, trials=trials, folds=folds)
        done, todo = [], []
        for trial in rung_plan.trials:
            if trial.trial_id in previous:
                done.append(previous[trial.trial_id])
                done[-1].index = trial.index
            else:
                todo.append(trial)
        run_ids: dict[str, str] = {}
        for result in done:
            result.rung, result.resources = number, resources
            run_ids[result.trial_id] = tracker.log_trial(parent_run_id, plan.search_id, result)
        mark = {"rung": number, "resources": resources}
        fresh = run_trials(
            spec, rung_plan, todo, tracker, parent_run_id, observer, results + done, mark, run_ids
        )
        reused += len(done)
        by_id = {r.trial_id: r for r in done + fresh}
        rung_results = [by_id[t.trial_id] for t in rung_plan.trials]
        keep = top_k(
            [r.mean_score for r in rung_results], -(-len(rung_results) // spec.search.factor)
        )
        last = number == len(rungs.resources) - 1
        for position, result in enumerate(rung_results):
            result.eliminated = False if last else position not in keep
            if result.eliminated:
                tracker.set_tags(run_ids[result.trial_id], {"mlpipe.eliminated": "true"})
        results += rung_results
        first += len(rung_results)
        configs = [configs[position] for position in keep]
    return results, reused


def _candidate(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """A rung-0 trial's candidate: its params less the size resource."""
    return {k: v for k, v in params.items() if k != spec.search.resource}
