"""Model families: how to build each estimator, which hyperparameters it takes, its default space.

A family is one entry in ``FAMILIES``. Every family here is an ensemble whose first k members are
exactly a k-member model with the same seed (RandomForest draws one seed per tree in order;
boosting adds rounds in order), so ``predict_first`` lets one fit of the largest size score every
smaller size in a search. Pure: imports neither Prefect nor MLflow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
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
    size_param: str = "n_estimators"
    default_size: int = 100

    @property
    def hyperparameters(self) -> frozenset[str]:
        """Names a search may set (the estimator's own parameters less the reserved ones)."""
        return _cached_hyperparameters(self.name)


def _build_random_forest(params: Params, seed: int) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    # n_jobs=1: parallelism comes from running trials side by side, not trees inside one fit.
    return RandomForestRegressor(random_state=seed, n_jobs=1, **params)


def _forest_first(model: Any, X: np.ndarray, k: int) -> np.ndarray:
    # A shallow copy that keeps the first k trees is, tree for tree, the k-tree forest.
    if k == len(model.estimators_):
        return np.asarray(model.predict(X))
    head = copy.copy(model)
    head.estimators_ = model.estimators_[:k]
    head.n_estimators = k
    return np.asarray(head.predict(X))


def _random_forest_hyperparameters() -> frozenset[str]:
    from sklearn.ensemble import RandomForestRegressor

    return frozenset(RandomForestRegressor().get_params()) - RESERVED - {"oob_score"}


def _build_xgboost(params: Params, seed: int) -> Any:
    from xgboost import XGBRegressor

    return XGBRegressor(random_state=seed, n_jobs=1, **params)


def _boosting_first(model: Any, X: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(model.predict(X, iteration_range=(0, k)))


def _xgboost_hyperparameters() -> frozenset[str]:
    from xgboost import XGBRegressor

    # Early stopping would make the number of rounds data-dependent and break prefix scoring.
    names = set(XGBRegressor().get_params()) | {"n_estimators"}
    return frozenset(names) - RESERVED - {"early_stopping_rounds", "callbacks", "kwargs"}


FAMILIES: dict[str, Family] = {
    "random_forest": Family(
        name="random_forest",
        build=_build_random_forest,
        predict_first=_forest_first,
        list_hyperparameters=_random_forest_hyperparameters,
        default_space={
            "n_estimators": [50, 100, 200],
            "max_depth": [None, 10, 20],
            "min_samples_split": [2, 5, 10],
            "min_samples_leaf": [1, 2, 4],
        },
    ),
    "xgboost": Family(
        name="xgboost",
        build=_build_xgboost,
        predict_first=_boosting_first,
        list_hyperparameters=_xgboost_hyperparameters,
        default_space={
            "n_estimators": [100, 200, 400],
            "max_depth": [3, 6],
            "learning_rate": [0.05, 0.1],
            "subsample": [0.8, 1.0],
        },
    ),
}


@cache
def _cached_hyperparameters(name: str) -> frozenset[str]:
    return FAMILIES[name].list_hyperparameters()


def get_family(name: str) -> Family:
    """The family called ``name``; KeyError lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
