"""Running trials: cross-validate a unit of configs, refit the best, score it. Pure: no Prefect,
no MLflow, so the same code runs in a thread, a process, a Dask worker or a Kubernetes pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpipe.models import Family, get_family
from mlpipe.scoring import fold_metrics, get_scoring
from mlpipe.search import Unit

if TYPE_CHECKING:  # a pool worker of a numeric table imports neither pandas nor the column step
    import pandas as pd

    from mlpipe.columns import Columns


@dataclass
class TrialResult:
    """One config's cross-validation outcome, scored by ``scoring`` (``scoring.SCORINGS``:
    ``loss`` says which way is better)."""

    trial_id: str
    index: int
    params: dict[str, Any]
    fold_scores: list[float] = field(default_factory=list)
    mean_score: float = float("nan")
    std_score: float = float("nan")
    fold_metrics: dict[str, list[float]] = field(default_factory=dict)
    fit_seconds: float = 0.0
    status: str = "completed"
    error: str | None = None
    # successive halving: the rung (0 first), its resources, and whether the candidate stopped
    # here while others went on; None in other searches
    rung: int | None = None
    resources: int | None = None
    eliminated: bool | None = None
    scoring: str = "mse"

    @property
    def loss(self) -> float:
        """The mean CV score as a lower-is-better number: what a search ranks by."""
        return get_scoring(self.scoring).loss(self.mean_score)

    def to_json(self) -> dict[str, Any]:
        """The record written to tuning_results.json (NaN becomes null, in lists too)."""
        record = asdict(self)
        for key in ("mean_score", "std_score"):
            if not np.isfinite(record[key]):
                record[key] = None
        record["fold_scores"] = _nulls(record["fold_scores"])
        record["fold_metrics"] = {k: _nulls(v) for k, v in record["fold_metrics"].items()}
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrialResult:
        """The inverse of ``to_json`` (unknown keys ignored, null scores back to NaN)."""
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        for key in ("mean_score", "std_score"):
            if fields.get(key) is None:
                fields[key] = float("nan")
        fields["fold_scores"] = _nans(fields.get("fold_scores", []))
        fields["fold_metrics"] = {k: _nans(v) for k, v in fields.get("fold_metrics", {}).items()}
        return cls(**fields)


def _nulls(values: list[float]) -> list[float | None]:
    return [v if np.isfinite(v) else None for v in values]


def _nans(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def kfold(n_rows: int, cv: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``KFold(n_splits=cv)`` without shuffling: what GridSearchCV uses for an integer cv."""
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=cv).split(np.zeros((n_rows, 1))))


def cv_folds(y: np.ndarray, cv: int, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """What GridSearchCV uses for an integer cv: ``kfold``, or for a classifier
    ``StratifiedKFold(n_splits=cv)`` (no shuffling) on the labels ``y``."""
    from sklearn.model_selection import StratifiedKFold

    if task != "classification":
        return kfold(len(y), cv)
    return list(StratifiedKFold(n_splits=cv).split(np.zeros((len(y), 1)), y))


@dataclass
class FoldFit:
    """What one fold's fit of a unit left: metrics per ensemble size, the depth its deepest tree
    reached (None: the family cannot tell) and the seconds the fit took."""

    per_size: dict[int, dict[str, float]]
    depth: int | None
    seconds: float


@dataclass
class UnitRun:
    """A cross-validated unit: its trials' results and each fold's fit (for units that may
    reuse it: ``search.depth_references``)."""

    results: list[TrialResult]
    folds: list[FoldFit]


@dataclass(frozen=True)
class Warm:
    """A folder (on this machine, private to the search's process) where a halving search
    over ensemble size keeps each candidate's fitted fold models between rungs, so that a
    survivor's next rung fits only its new members (``Family.grow``). A model not found there
    (another machine's, a reused trial's) is fitted from scratch: the same model either way.
    Models of the last rung's size (``last``) are not kept: nothing grows them."""

    folder: str
    last: int

    def path(self, params: dict[str, Any], size_param: str, fold: int) -> Path:
        other = {k: v for k, v in params.items() if k != size_param}
        key = json.dumps(other, sort_keys=True, default=repr).encode()
        return Path(self.folder) / f"{hashlib.sha256(key).hexdigest()[:20]}-{fold}.pkl"

    def grow(
        self, family: Family, params: dict[str, Any], fold: int, X: np.ndarray, y: np.ndarray
    ) -> Any | None:
        """The candidate's model of ``fold`` from an earlier rung, grown to this size on
        (X, y); None when there is none or it cannot grow exactly (then fit from scratch)."""
        if family.grow is None:
            return None
        try:
            with open(self.path(params, family.size_param, fold), "rb") as handle:
                model = pickle.load(handle)  # written by this search's own processes
        except FileNotFoundError:
            return None
        return family.grow(model, params[family.size_param], X, y)

    def save(self, family: Family, params: dict[str, Any], fold: int, model: Any) -> None:
        """Keep the model for the candidate's next rung (none after the last)."""
        if params[family.size_param] >= self.last:
            return
        path = self.path(params, family.size_param, fold)
        partial = path.with_suffix(".part")
        with open(partial, "wb") as handle:
            pickle.dump(model, handle, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(path)  # a reader never sees half a model


def cross_validate_unit(
    unit: Unit,
    family: Family,
    X: np.ndarray | pd.DataFrame,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
    reference: list[FoldFit] | None = None,
    warm: Warm | None = None,
) -> UnitRun:
    """Cross-validate every config of ``unit``: per fold, fit the largest size once and score each
    smaller size on its first k members. With ``reference`` (the folds of the unit that differs
    only by a looser depth cap), a fold whose reference trees stayed shallower than this unit's
    cap is that fit exactly, and is taken from it instead of fitted again. With ``warm``, a
    fold's fit grows the candidate's model of an earlier rung, and is kept for the next. Raises
    on failure (the caller records and retries)."""
    sizes = sorted(set(unit.sizes))
    with _one_thread(family):
        fold_fits = _fit_folds(unit, family, X, y, folds, seed, reference, warm)
    fit_seconds = sum(f.seconds for f in fold_fits)
    largest_size = max(sizes)
    results = []
    for trial in unit.trials:
        size = unit.size_of(trial)
        metrics = {
            name: [fold.per_size[size][name] for fold in fold_fits]
            for name in fold_fits[0].per_size[size]
        }
        scores = metrics[family.scoring]
        results.append(
            TrialResult(
                trial_id=trial.trial_id,
                index=trial.index,
                params=trial.params,
                fold_scores=scores,
                mean_score=float(np.mean(scores)),
                std_score=float(np.std(scores)),
                fold_metrics=metrics,
                # The fit is shared; charge each size its share (tree time is linear in trees).
                # A fold taken from the reference cost no fit here.
                fit_seconds=fit_seconds * size / largest_size,
                scoring=family.scoring,
            )
        )
    return UnitRun(results, fold_fits)


def _one_thread(family: Family) -> Any:
    if not family.openmp:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="openmp")


def _fit_folds(
    unit: Unit,
    family: Family,
    X: np.ndarray | pd.DataFrame,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
    reference: list[FoldFit] | None,
    warm: Warm | None,
) -> list[FoldFit]:
    """Each fold's fit of the unit's largest config, scored at every size of the unit."""
    sizes = sorted(set(unit.sizes))
    largest = unit.largest_params
    encoding = None
    if not isinstance(X, np.ndarray):
        from mlpipe.columns import columns_of, encoder, fit_fold

        encoding = encoder(family.name, columns_of(X), X, family.task, seed)
    build_params = {**largest, **(encoding.model_params if encoding else {})}
    cap = largest.get(family.depth_param) if family.depth_param else None
    fold_fits: list[FoldFit] = []
    for i, (train_idx, test_idx) in enumerate(folds):
        same = reference[i] if reference is not None else None
        if same is not None and _reaches_no_cap(same, cap, sizes):
            fold_fits.append(FoldFit(same.per_size, same.depth, 0.0))
            continue
        started = time.perf_counter()
        if encoding is None:
            X_fit, X_score = X[train_idx], X[test_idx]
        else:  # the column step is fitted on the fold's training rows, as in a Pipeline
            X_fit, X_score = fit_fold(encoding, X, y, train_idx, test_idx)
        model = None if warm is None else warm.grow(family, largest, i, X_fit, y[train_idx])
        if model is None:
            model = family.build(build_params, seed)
            model.fit(X_fit, y[train_idx])
        if warm is not None:
            warm.save(family, largest, i, model)
        seconds = time.perf_counter() - started
        per_size = {k: fold_metrics(family, model, X_score, y[test_idx], k) for k in sizes}
        depth = family.depth_of(model) if family.depth_of is not None else None
        fold_fits.append(FoldFit(per_size, depth, seconds))
    return fold_fits


def _reaches_no_cap(fit: FoldFit, cap: Any, sizes: list[int]) -> bool:
    """Whether ``fit``'s trees all stayed shallower than ``cap`` and it scored ``sizes``."""
    return (
        cap is not None
        and fit.depth is not None
        and fit.depth < cap
        and all(k in fit.per_size for k in sizes)
    )


def warm_up(family: str) -> None:  # a Family.key
    """Import what a trial of ``family`` needs (a pool or Dask worker runs this first, so the
    imports happen before the trials, and no more than the trials need)."""
    get_family(family).build({}, 0)


def failed_results(unit: Unit, exc: BaseException) -> list[TrialResult]:
    """Every trial of a unit that raised, recorded as failed with the error."""
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return [
        TrialResult(
            trial_id=t.trial_id, index=t.index, params=t.params, status="failed", error=message
        )
        for t in unit.trials
    ]


def fit_final(
    family: Family,
    params: dict[str, Any],
    X: Any,
    y: Any,
    seed: int,
    columns: Columns | None = None,
) -> Any:
    """Refit ``params`` on the whole training split (features keep their names). With
    ``columns`` (a table with categories or booleans), the model is the pipeline that casts
    and encodes the table as loaded before the estimator (``columns.make_pipeline``)."""
    if columns is None:
        model = family.build(params, seed)
    else:
        from mlpipe.columns import encoder, make_pipeline

        encoding = encoder(family.name, columns, X, family.task, seed)
        estimator = family.build({**params, **encoding.model_params}, seed)
        model = make_pipeline(columns, encoding, estimator)
    model.fit(X, y)
    return model
