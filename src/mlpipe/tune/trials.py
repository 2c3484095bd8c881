"""Cross-validating a search's units as Prefect tasks, on the flow's task runner: costliest
first, each unit's trials logged to MLflow as it finishes, and a unit that differs from another
only by a tighter depth cap started after it with its folds (``search.depth_references``).

From the CLI on one machine the model work runs in a plain process pool that ``runtime`` starts
(and warms) while the backends start, and each unit's task run waits on it from a thread of
the flow's process: the same task runs, states and retries in the Prefect UI, without a
Prefect engine, API client and context to set up in a subprocess for every task (about a
quarter of a second each here, a third of a worker's time on the reference grid).
"""

from __future__ import annotations

from concurrent.futures import Executor
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

from mlpipe.models import get_family
from mlpipe.search import TrialConfig, Unit, depth_references, plan_units, select_best
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import FoldFit, TrialResult, UnitRun, cross_validate_unit, failed_results
from mlpipe.tune.progress import Observer

if TYPE_CHECKING:
    from mlpipe.tune.steps import Prepared

# The process pool the model work runs in, set by the caller around the flow call (None: a
# deployment's run or Dask, where each task computes where its task runner put it).
compute_var: ContextVar[Executor | None] = ContextVar("mlpipe_compute", default=None)


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
    pool: Executor | None = None,
) -> UnitRun:
    """Cross-validate one unit of configs (a Prefect task), in ``pool`` if given, reusing the
    folds of ``reference`` that are this unit's fit too."""
    args = (unit, get_family(family), X, y, folds, seed, reference)
    if pool is None:
        return cross_validate_unit(*args)
    # a pool process imports mlpipe.trial alone (not Prefect, not MLflow) to run it
    return pool.submit(cross_validate_unit, *args).result()


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
) -> list[TrialResult]:
    """Cross-validate ``todo`` on the flow's task runner, costliest unit first, logging each
    trial to MLflow as its unit finishes; a unit that raises is recorded as failed trials."""
    family = get_family(spec.model.family)
    X, y = plan.split.train_arrays
    cv_task = cross_validate.with_options(
        retries=spec.search.retries, retry_delay_seconds=spec.search.retry_delay_seconds
    )
    units = plan_units(todo, family)
    references = depth_references(units, family)
    waiting: dict[int, list[int]] = {}  # a unit's index -> the units that may reuse its fit
    for i, reference in enumerate(references):
        if reference is not None:
            waiting.setdefault(reference, []).append(i)

    pool = compute_var.get()

    def submit(i: int, reference: list[FoldFit] | None = None) -> Any:
        unit = units[i]
        return cv_task.submit(
            unit, family.name, X, y, plan.folds, spec.seed, unit_label(unit), reference, pool
        )

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
            tracker.log_trial(parent_run_id, plan.search_id, result)
            results.append(result)
            observer.trial_done(result, select_best(earlier + results))
    return results
