"""Model families: how to build each estimator, which hyperparameters it takes, its default space.

A family is one entry in ``FAMILIES``. Every family here is an ensemble whose first k members are
exactly a k-member model with the same seed (RandomForest draws one seed per tree in order;
boosting adds rounds in order), so ``predict_first`` lets one fit of the largest size score every
smaller size in a search. A family may also say which configs fit the same model (``effective``)
and how deep a fitted model grew (``depth_of``), so a search fits such configs once. Pure: imports
neither Prefect nor MLflow.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Any

import numpy as np

Params = Mapping[str, Any]

# Arguments mlpipe owns: set from the spec's seed and the trial scheduler, never searched.
RESERVED = frozenset({"random_state", "n_jobs", "nthread", "verbose", "verbosity", "warm_start"})


@dataclass(frozen=True)
class Family:
    """One model family: factory, searchable hyperparameters and default search space."""

    name: str
    build: Callable[[Params, int], Any]
    predict_first: Callable[[Any, np.ndarray, int], np.ndarray]
    list_hyperparameters: Callable[[], frozenset[str]]
    default_space: Mapping[str, list[Any]]
    # raises the library's own error for a built estimator whose parameters it refuses
    validate: Callable[[Any], None]
    size_param: str = "n_estimators"
    default_size: int = 100
    # the params as the library will fit them: configs that agree here fit the same model
    effective: Callable[[Params], dict[str, Any]] = dict
    # the parameter that caps tree depth, and the depth a fitted model's trees reached: a fit
    # whose trees stay shallower than a cap is, exactly, the fit with that cap (None: no such
    # shortcut, as in boosting, where each tree depends on the earlier ones)
    depth_param: str | None = None
    depth_of: Callable[[Any], int] | None = None
    # a fitted model grown to k members on (X, y), keeping the ones it has: the same model as a
    # fit of k from scratch; None when that would not be exact (or the family cannot)
    grow: Callable[[Any, int, np.ndarray, np.ndarray], Any | None] | None = None
    # what it predicts and how a fold is scored (``scoring.py``); a classifier's first k
    # members' class probabilities, one column per class code
    task: str = "regression"
    scoring: str = "mse"
    proba_first: Callable[[Any, np.ndarray, int], np.ndarray] | None = None
    # whether the estimator fits any labels (strings, booleans) as its classes; XGBoost takes
    # only the codes 0..k-1
    any_labels: bool = True
    # the estimator has no n_jobs and takes every core through OpenMP: a trial limits it to one
    # thread (parallelism comes from running trials side by side)
    openmp: bool = False

    @property
    def key(self) -> str:
        """What names this family, task and scoring to a worker (``get_family(key)``) and in
        trial ids: the family's name alone for regression scored by MSE, as before tasks."""
        if (self.task, self.scoring) == ("regression", "mse"):
            return self.name
        return f"{self.name}:{self.task}:{self.scoring}"

    @property
    def hyperparameters(self) -> frozenset[str]:
        """Names a search may set (the estimator's own parameters less the reserved ones)."""
        return _cached_hyperparameters(self.name, self.task)


def _estimator(path: str) -> Any:
    """The class at ``path`` ("module.Class"), imported when first asked for."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _build(path: str, params: Params, seed: int) -> Any:
    # n_jobs=1: parallelism comes from running trials side by side, not trees inside one fit.
    return _estimator(path)(random_state=seed, n_jobs=1, **params)


def _forest_first(model: Any, X: np.ndarray, k: int, method: str = "predict") -> np.ndarray:
    # A shallow copy that keeps the first k trees is, tree for tree, the k-tree forest.
    if k == len(model.estimators_):
        return np.asarray(getattr(model, method)(X))
    head = copy.copy(model)
    head.estimators_ = model.estimators_[:k]
    head.n_estimators = k
    return np.asarray(getattr(head, method)(X))


def _forest_grow(model: Any, k: int, X: np.ndarray, y: np.ndarray) -> Any | None:
    # warm_start keeps the fitted trees and advances the seed sequence past them, so the new
    # trees are those a k-tree fit from scratch would grow (scikit-learn's documented contract)
    if len(model.estimators_) >= k:
        return None
    model.set_params(n_estimators=k, warm_start=True)
    return model.fit(X, y)


def _forest_effective(params: Params) -> dict[str, Any]:
    # scikit-learn's tree fit raises min_samples_split to 2 * min_samples_leaf (whole numbers;
    # fractions depend on the fold's size), so configs below that floor grow the same trees
    effective = dict(params)
    split, leaf = effective.get("min_samples_split"), effective.get("min_samples_leaf", 1)
    if _whole(split) and _whole(leaf):
        effective["min_samples_split"] = max(split, 2 * leaf)
    return effective


def _whole(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _forest_depth(model: Any) -> int:
    """The depth of the forest's deepest tree (a lone root is depth 0)."""
    return max(int(tree.tree_.max_depth) for tree in model.estimators_)


def _forest_hyperparameters(path: str) -> frozenset[str]:
    return frozenset(_estimator(path)().get_params()) - RESERVED - {"oob_score"}


def _sklearn_validate(model: Any) -> None:
    # scikit-learn checks every parameter against its declared constraints without fitting
    model._validate_params()


# XGBoost draws rows and columns with a generator that restarts when boosting is continued, so
# continued rounds equal a fresh fit's only when nothing is subsampled (measured: subsample 0.8
# differs, 1.0 is equal to the bit)
_SAMPLING = ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")


def _xgboost_grow(model: Any, k: int, X: np.ndarray, y: np.ndarray) -> Any | None:
    params = model.get_params()
    rounds = model.get_booster().num_boosted_rounds()
    if rounds >= k or any(params.get(name) not in (None, 1, 1.0) for name in _SAMPLING):
        return None
    more = type(model)(**{**params, "n_estimators": k - rounds})
    return more.fit(X, y, xgb_model=model.get_booster())  # its booster holds all k rounds


def _boosting_first(model: Any, X: np.ndarray, k: int, method: str = "predict") -> np.ndarray:
    return np.asarray(getattr(model, method)(X, iteration_range=(0, k)))


def _xgboost_hyperparameters(path: str) -> frozenset[str]:
    # Early stopping would make the number of rounds data-dependent and break prefix scoring.
    names = set(_estimator(path)().get_params()) | {"n_estimators"}
    return frozenset(names) - RESERVED - {"early_stopping_rounds", "callbacks", "kwargs"}


def _fit_validate(model: Any) -> None:
    # A booster's core checks parameters when it is configured: one round on 8 rows, ~2 ms
    # (labels 0 and 1: a target both a regressor and a classifier take)
    X = np.arange(24, dtype=np.float64).reshape(8, 3)
    model.fit(X, np.arange(8) % 2)


_FOREST_SPACE: dict[str, list[Any]] = {
    "n_estimators": [50, 100, 200],
    "max_depth": [None, 10, 20],
    "min_samples_split": [2, 5, 10],
    "min_samples_leaf": [1, 2, 4],
}


def _forest(name: str, path: str) -> Family:
    """A scikit-learn forest family (regressor at ``path``): every forest shortcut holds for it
    (prefix scoring, the min_samples_split floor, depth references, growing by warm start)."""
    return Family(
        name=name,
        build=partial(_build, path),
        predict_first=_forest_first,
        list_hyperparameters=partial(_forest_hyperparameters, path),
        default_space=_FOREST_SPACE,
        validate=_sklearn_validate,
        effective=_forest_effective,
        depth_param="max_depth",
        depth_of=_forest_depth,
        grow=_forest_grow,
    )


def _build_hist(path: str, params: Params, seed: int) -> Any:
    # no early stopping: the number of rounds would depend on a validation draw, and a k-round
    # prefix would no longer be the k-round model
    return _estimator(path)(random_state=seed, early_stopping=False, **params)


def _hist_first(model: Any, X: np.ndarray, k: int, method: str = "predict") -> np.ndarray:
    # A shallow copy that keeps the first k rounds is, round for round, the k-round model
    # (predictions add each round's trees to the baseline in order)
    if k == len(model._predictors):
        return np.asarray(getattr(model, method)(X))
    head = copy.copy(model)
    head._predictors = model._predictors[:k]
    return np.asarray(getattr(head, method)(X))


def _hist_hyperparameters(path: str) -> frozenset[str]:
    # the early-stopping knobs do nothing with early stopping off; categorical_features is
    # mlpipe's (columns.encoder), from the table's column kinds
    fixed = {"early_stopping", "n_iter_no_change", "validation_fraction", "scoring", "tol"}
    return frozenset(_estimator(path)().get_params()) - RESERVED - fixed - {"categorical_features"}


def _build_lightgbm(path: str, params: Params, seed: int) -> Any:
    # verbose=-1: LightGBM's own progress lines would print in the middle of `train`
    return _estimator(path)(random_state=seed, n_jobs=1, verbose=-1, **params)


def _lightgbm_first(model: Any, X: np.ndarray, k: int, method: str = "predict") -> np.ndarray:
    # LightGBM's first k rounds are the k-round model (rounds are added in order)
    return np.asarray(getattr(model, method)(X, num_iteration=k))


def _lightgbm_hyperparameters(path: str) -> frozenset[str]:
    # the importance type only changes feature_importances_, never the fit
    return frozenset(_estimator(path)().get_params()) - RESERVED - {"importance_type"}


def _boosting(path: str, functions: tuple[Any, ...], space: dict[str, list[Any]]) -> Family:
    """A gradient-boosting family (regressor at ``path``, named by its module): ``functions``
    are its (build, predict_first, hyperparameters, grow). Its first k rounds are the k-round
    model (prefix scoring); it has no depth shortcut (each tree depends on the ones before)."""
    build, first, hyperparameters, grow = functions
    return Family(
        name=path.split(".")[0],
        build=partial(build, path),
        predict_first=first,
        list_hyperparameters=partial(hyperparameters, path),
        default_space=space,
        validate=_fit_validate,
        grow=grow,
    )


FAMILIES: dict[str, Family] = {
    "random_forest": _forest("random_forest", "sklearn.ensemble.RandomForestRegressor"),
    # Extremely randomized trees draw their split thresholds at random, in the same seed order
    # per tree as a random forest, so the same shortcuts are exact for them
    "extra_trees": _forest("extra_trees", "sklearn.ensemble.ExtraTreesRegressor"),
    # scikit-learn's histogram boosting: native categories and missing values
    "hist_gradient_boosting": Family(
        name="hist_gradient_boosting",
        build=partial(_build_hist, "sklearn.ensemble.HistGradientBoostingRegressor"),
        predict_first=_hist_first,
        list_hyperparameters=partial(
            _hist_hyperparameters, "sklearn.ensemble.HistGradientBoostingRegressor"
        ),
        default_space={
            "max_iter": [100, 200, 400],
            "learning_rate": [0.05, 0.1],
            "max_leaf_nodes": [15, 31],
            "min_samples_leaf": [10, 20],
        },
        validate=_sklearn_validate,
        size_param="max_iter",
        openmp=True,
    ),
    "xgboost": _boosting(
        "xgboost.XGBRegressor",
        (_build, _boosting_first, _xgboost_hyperparameters, _xgboost_grow),
        {
            "n_estimators": [100, 200, 400],
            "max_depth": [3, 6],
            "learning_rate": [0.05, 0.1],
            "subsample": [0.8, 1.0],
        },
    ),
    "lightgbm": _boosting(
        "lightgbm.LGBMRegressor",
        (_build_lightgbm, _lightgbm_first, _lightgbm_hyperparameters, None),
        {
            "n_estimators": [100, 200, 400],
            "num_leaves": [15, 31],
            "learning_rate": [0.05, 0.1],
            "min_child_samples": [10, 20],
        },
    ),
}


def _classifier(family: Family) -> Family:
    """The classification twin of a regression family: the estimator at the same path with
    ``Classifier`` for ``Regressor``; its prefixes predict class codes and probabilities (a
    forest averages its trees' probabilities, boosting sums its rounds: both exact)."""
    path = family.build.args[0].replace("Regressor", "Classifier")  # type: ignore[attr-defined]
    return replace(
        family,
        build=partial(family.build.func, path),  # type: ignore[attr-defined]
        list_hyperparameters=partial(family.list_hyperparameters.func, path),  # type: ignore[attr-defined]
        task="classification",
        scoring="log_loss",
        proba_first=partial(family.predict_first, method="predict_proba"),  # type: ignore[call-arg]
        any_labels=not path.startswith("xgboost"),
    )


CLASSIFIERS: dict[str, Family] = {name: _classifier(f) for name, f in FAMILIES.items()}


@cache
def _cached_hyperparameters(name: str, task: str) -> frozenset[str]:
    return _families(task)[name].list_hyperparameters()


def _families(task: str) -> dict[str, Family]:
    return CLASSIFIERS if task == "classification" else FAMILIES


def refused_value(family: Family, space: Mapping[str, Any]) -> str | None:
    """The first value in ``space`` that ``family``'s estimator refuses, as one line naming the
    parameter, the value and what the library allows; None when every value is accepted. A range
    (``spec.Range``) is checked at both ends.

    Each value is checked on its own (the others at their defaults) before anything is fitted
    or tracked, so a bad spec fails up front instead of as failed trials.
    """
    for name, values in space.items():
        for value in getattr(values, "ends", values):
            if name == family.size_param:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    allowed = "give whole numbers >= 1"
                    return f"search.params.{name}: {value!r} is not allowed; {allowed}"
                continue
            try:
                family.validate(family.build({family.size_param: 1, name: value}, 0))
            except (ValueError, TypeError) as exc:  # the library's message says what it allows
                return f"search.params.{name}: {value!r} is not allowed: {_first_line(exc)}"
    return None


def _first_line(exc: Exception) -> str:
    """A library's error without XGBoost's "[12:00:00] src/file.cc:24: " prefix and trace."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)


def get_family(key: str, task: str = "regression", scoring: str | None = None) -> Family:
    """The family called ``key`` (a name, or a ``Family.key``) for ``task`` scored by
    ``scoring`` (None: the task's default); KeyError lists the known ones."""
    name, _, rest = key.partition(":")
    if rest:
        task, _, scoring = rest.partition(":")
    try:
        family = _families(task)[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
    return family if scoring in (None, family.scoring) else replace(family, scoring=scoring)
