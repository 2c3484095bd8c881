"""Cross-validating a search's units as Prefect tasks, on the flow's task runner: costliest
first, each unit's trials logged to MLflow as it finishes, and a unit that differs from another
only by a tighter depth cap started after it with its folds (``search.depth_references``).

From the CLI on one machine the model work runs in a plain process pool (``Compute``) that
``runtime`` starts while the backends start, and that begins the search's units then; each
unit's task run waits on it from a thread of the flow's process: the same task runs, states
and retries in the Prefect UI, without a Prefect engine, API client and context to set up in a
subprocess for every task (about a quarter of a second each here, a third of a worker's time
on the reference grid). A task run that finds its unit started early covers the part of the
work left when the flow reached it.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

from mlpipe.models import get_family
from mlpipe.search import (
    TrialConfig,
    Unit,
    dependents,
    depth_references,
    plan_units,
    select_best,
)
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import (
    FoldFit,
    TrialResult,
    UnitRun,
    Warm,
    cross_validate_unit,
    failed_results,
)
from mlpipe.tune.progress import Observer

if TYPE_CHECKING:
    from mlpipe.tune.plan import Prepared


class Compute:
    """The process pool a search's model work runs in, and the units it started before the
    flow: ``start`` hands it units as soon as the search is planned, while the Prefect server
    is still starting, and a unit's task run then waits on that work instead of starting it.
    A unit is known by its trials' ids, which hash its family, params, data, folds and seed."""

    def __init__(self, pool: Executor) -> None:
        self.pool = pool
        self._started: dict[tuple[str, ...], Future[UnitRun]] = {}

    def start(
        self,
        units: list[Unit],
        family: str,
        X: np.ndarray,
        y: np.ndarray,
        folds: Any,
        seed: int,
        warm: Warm | None = None,
    ) -> None:
        """Start ``units`` now (those that reuse no other unit's fit: ``depth_references``)."""
        references = depth_references(units, get_family(family))
        for unit, reference in zip(units, references, strict=True):
            if reference is None:
                future = self._submit(unit, family, X, y, folds, seed, None, warm)
                self._started[_key(unit)] = future

    def run(
        self,
        unit: Unit,
        family: str,
        X: np.ndarray,
        y: np.ndarray,
        folds: Any,
        seed: int,
        reference: list[FoldFit] | None,
        warm: Warm | None = None,
    ) -> UnitRun:
        """The unit's result: from its early start if it had one, else computed now."""
        early = self._started.pop(_key(unit), None) if reference is None else None
        return (early or self._submit(unit, family, X, y, folds, seed, reference, warm)).result()

    def _submit(self, unit: Unit, family: str, *args: Any) -> Future[UnitRun]:
        # a pool process imports mlpipe.trial alone (not Prefect, not MLflow) to run it
        return self.pool.submit(cross_validate_unit, unit, get_family(family), *args)


def _key(unit: Unit) -> tuple[str, ...]:
    return tuple(t.trial_id for t in unit.trials)


# The model work's pool, set by the caller around the flow call (None: a deployment's run or
# Dask, where each task computes where its task runner put it).
compute_var: ContextVar[Compute | None] = ContextVar("mlpipe_compute", default=None)


@task(name="cross-validate", cache_policy=NONE, task_run_name="cv {label}")
def cross_validate(
    unit: Unit,
    family: str,
    X: np.ndarray,
    y: np.ndarray,
    folds: list[Any],
    seed: int,
    label: str,
    reference: list[FoldFit] | None = None,
    compute: Compute | None = None,
    warm: Warm | None = None,
) -> UnitRun:
    """Cross-validate one unit of configs (a Prefect task), on ``compute`` if given, reusing
    the folds of ``reference`` that are this unit's fit too (and ``warm``'s models)."""
    if compute is not None:
        return compute.run(unit, family, X, y, folds, seed, reference, warm)
    return cross_validate_unit(unit, get_family(family), X, y, folds, seed, reference, warm)


def unit_label(unit: Unit) -> str:
    """A readable task-run name: the unit's sizes and its other params (a|b where configs that
    fit the same model differ)."""
    values: dict[str, list[Any]] = {}  # configs that fit the same model differ here
    for trial in unit.trials:
        for name, value in trial.params.items():
            if name != unit.size_param and value not in values.setdefault(name, []):
                values[name].append(value)
    sizes = "/".join(map(str, sorted(set(unit.sizes))))
    fixed = [f"{k}={'|'.join(map(str, v))}" for k, v in sorted(values.items())]
    return ",".join([f"{unit.size_param}={sizes}", *fixed])


def run_trials(
    spec: Spec,
    plan: Prepared,
    todo: list[TrialConfig],
    tracker: Tracker,
    parent_run_id: str,
    observer: Observer,
    earlier: list[TrialResult],
    marks: dict[str, Any] | None = None,
    run_ids: dict[str, str] | None = None,
    warm: Warm | None = None,
) -> list[TrialResult]:
    """Cross-validate ``todo`` on the flow's task runner, costliest unit first, logging each
    trial to MLflow as its unit finishes; a unit that raises is recorded as failed trials.
    ``marks`` are set on each result before it is logged (a halving rung's); ``run_ids`` gets
    each trial's MLflow run id; ``warm`` keeps and grows a halving candidate's models."""
    family = spec.family
    X, y = plan.split.train_arrays
    cv_task = cross_validate.with_options(
        retries=spec.search.retries, retry_delay_seconds=spec.search.retry_delay_seconds
    )
    units = plan_units(todo, family)
    references = depth_references(units, family)
    waiting = dependents(references)

    compute = compute_var.get()

    def submit(i: int, reference: list[FoldFit] | None = None) -> Any:
        unit = units[i]
        return cv_task.submit(unit, family.key, X, y, plan.folds, spec.seed, unit_label(unit),
                              reference, compute, warm)  # fmt: skip

    # costliest first; a unit with a reference waits for it, then starts with its folds
    pending = {submit(i): i for i, reference in enumerate(references) if reference is None}
    results: list[TrialResult] = []
    while pending:
        future = next(as_completed(list(pending)))
        i = pending.pop(future)
        reference = None
        try:
            run = future.result()
            reference, unit_results = run.folds, run.results
        except Exception as exc:  # the trial's own error: recorded, and the search goes on
            unit_results = failed_results(units[i], exc)
        for j in waiting.get(i, []):
            pending[submit(j, reference)] = j
        for result in unit_results:
            for name, value in (marks or {}).items():
                setattr(result, name, value)
            run_id = tracker.log_trial(parent_run_id, plan.search_id, result)
            if run_ids is not None:
                run_ids[result.trial_id] = run_id
            results.append(result)
            observer.trial_done(result, select_best(earlier + results))
    return results
