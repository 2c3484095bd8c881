"""Successive halving, rung by rung, as scikit-learn's ``HalvingGridSearchCV`` and
``HalvingRandomSearchCV`` run it, with every rung's trials cross-validated as Prefect tasks and
tracked in MLflow like any search's (``Rungs``: the steps ``stepwise`` runs, on one machine or
across shards).

Rung 0 evaluates every candidate with the fewest resources; each later rung keeps the best
``ceil(n / factor)`` and gives them ``factor`` times the resources (``search.halving_schedule``,
``search.top_k``). The resource is ``n_samples`` (each fold's train and test rows subsampled
with ``sklearn.utils.resample``, seeded as scikit-learn seeds it) or the family's size parameter
(``n_estimators``: the candidates get that many trees). The best is the best of the last rung.
Each rung's trials are ordinary trials with the rung, its resources and whether the candidate
was eliminated there recorded (``TrialResult``; MLflow tags ``mlpipe.rung``, ``mlpipe.resources``,
``mlpipe.eliminated``); a rerun reuses every trial MLflow holds finished, rung by rung.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpipe.search import (
    HalvingSchedule,
    Step,
    TrialConfig,
    expand,
    halving_schedule,
    make_trial_id,
    top_k,
)
from mlpipe.spec import Spec
from mlpipe.trial import TrialResult, Warm, cv_folds

if TYPE_CHECKING:
    from mlpipe.tune.plan import Prepared

Folds = list[tuple[np.ndarray, np.ndarray]]
SMALLEST_PER_FOLD = 2  # scikit-learn's "smallest" n_samples: 2 rows per fold (and class)


def candidates(spec: Spec, n_train: int, n_classes: int = 1) -> list[dict[str, Any]]:
    """The first rung's candidates: the grid, or a seeded draw of ``n_trials`` (default, as
    scikit-learn's "exhaust": max_resources // min_resources of them)."""
    search = spec.search
    if search.candidates == "grid":
        return expand(spec.search_space, "grid", spec.seed)
    n = search.n_trials or max_resources(spec, n_train) // smallest(spec, n_classes)
    return expand(spec.search_space, "random", spec.seed, n)


def smallest(spec: Spec, n_classes: int = 1) -> int:
    """The least resources a rung may get: an int ``min_resources``, else scikit-learn's
    "smallest" (2 rows per fold for n_samples, times the classes of a classifier; 1 for a size
    parameter)."""
    search = spec.search
    if isinstance(search.min_resources, int):
        return search.min_resources
    return SMALLEST_PER_FOLD * search.cv * n_classes if search.resource == "n_samples" else 1


def n_classes(dataset: Any) -> int:
    """A classifier's number of classes (scikit-learn's "smallest" scales with it), else 1."""
    return 1 if dataset.classes is None else len(dataset.classes)


def max_resources(spec: Spec, n_train: int) -> int:
    return spec.search.max_resources or n_train


def schedule(spec: Spec, n_train: int, n_candidates: int, n_classes: int = 1) -> HalvingSchedule:
    search = spec.search
    top, low = max_resources(spec, n_train), smallest(spec, n_classes)
    if low > top:
        from mlpipe.errors import SpecError

        raise SpecError(
            f"search.min_resources: {low} is larger than the {top} the last rung may get "
            f"({search.resource})"
        )
    return halving_schedule(
        n_candidates, search.factor, low, top, search.first_resources, search.aggressive_elimination
    )


def warm_models(spec: Spec, plan: Prepared) -> Warm | None:
    """Where this process's halving search over the family's size keeps each candidate's fold
    models between rungs (``trial.Warm``: a survivor's next rung fits only its new members);
    None for other searches, families that cannot grow a model exactly, or trials that run on
    other machines (a Dask cluster's address). The caller removes it when the search ends."""
    family = spec.family
    if (
        spec.search.strategy != "halving"
        or spec.search.resource != family.size_param
        or family.grow is None
        or spec.executor.startswith("dask://")
    ):
        return None
    folder = Path(tempfile.gettempdir()) / f"mlpipe-warm-{plan.search_id}-{os.getpid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        return None
    rungs = schedule(spec, len(plan.split.y_train), len(plan.trials), n_classes(plan.dataset))
    last = rungs.resources[-1]
    return Warm(str(folder), last)


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
    family, search = spec.family.key, spec.search
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
    spec: Spec, fingerprint: str, folds: Folds, n_train: int, n_classes: int = 1
) -> tuple[list[TrialConfig], Folds, str]:
    """Rung 0's trials and folds (what ``prepare`` plans and may start early), and a key of the
    halving settings for the search id."""
    configs = candidates(spec, n_train, n_classes)
    plan = schedule(spec, n_train, len(configs), n_classes)
    trials = rung_trials(spec, fingerprint, configs, 0, plan.resources[0], 0)
    search = spec.search
    key = (
        f"halving:{search.resource}:{search.factor}:{search.first_resources}:"
        f"{max_resources(spec, n_train)}:{search.aggressive_elimination}"
    )
    return trials, rung_folds(spec, folds, plan.resources[0], n_train), key


class Rungs:
    """Successive halving as ``stepwise`` steps: rung ``n``'s trials (``plan`` holds rung 0),
    then, told their results, the best ``ceil(n / factor)`` go on to the next rung with
    ``factor`` times the resources; the others are marked eliminated."""

    label = "rung"

    def __init__(self, spec: Spec, plan: Prepared) -> None:
        self.spec, self.plan = spec, plan
        self.n_train = len(plan.split.y_train)
        self.schedule = schedule(spec, self.n_train, len(plan.trials), n_classes(plan.dataset))
        self.total = sum(self.schedule.candidates)
        self.configs = [_candidate(spec, t.params) for t in plan.trials]
        self.number = self.first = 0

    def next(self) -> Step | None:
        """The next rung's trials, numbered on from the earlier rungs' (None after the last)."""
        if self.number == len(self.schedule.resources):
            return None
        number, resources = self.number, self.schedule.resources[self.number]
        marks = {"rung": number, "resources": resources}
        if number == 0:
            return Step(0, self.plan.trials, self.plan.folds, marks)
        spec, fingerprint = self.spec, self.plan.dataset.fingerprint
        trials = rung_trials(spec, fingerprint, self.configs, number, resources, self.first)
        every = cv_folds(self.plan.split.y_train.to_numpy(), spec.search.cv, spec.model.task)
        folds = rung_folds(spec, every, resources, self.n_train)
        return Step(number, trials, folds, marks)

    def tell(self, results: list[TrialResult]) -> None:
        """This rung's results, in its trials' order: keep the best, mark the others."""
        keep = top_k([r.loss for r in results], -(-len(results) // self.spec.search.factor))
        last = self.number == len(self.schedule.resources) - 1
        for position, result in enumerate(results):
            result.eliminated = False if last else position not in keep
        self.configs = [self.configs[position] for position in keep]
        self.first += len(results)
        self.number += 1


def _candidate(spec: Spec, params: dict[str, Any]) -> dict[str, Any]:
    """A rung-0 trial's candidate: its params less the size resource."""
    return {k: v for k, v in params.items() if k != spec.search.resource}
