"""The compute pool of `mlpipe train`: units started before the flow are taken, not redone."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlpipe.models import get_family
from mlpipe.search import depth_references, make_trials, plan_units
from mlpipe.trial import cross_validate_unit, kfold
from mlpipe.tune.trials import Compute


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return super().submit(*args, **kwargs)


@pytest.fixture(scope="module")
def xy():
    from sklearn.datasets import make_regression

    return make_regression(n_samples=90, n_features=4, noise=5.0, random_state=1)


def test_units_started_early_are_taken_once_and_dependent_units_wait_for_their_reference(xy):
    X, y = xy
    family = get_family("random_forest")
    space = [{"n_estimators": 4, "max_depth": d, "min_samples_leaf": 2} for d in (None, 50, 3)]
    units = plan_units(make_trials(space, family.name, "fp", 3, 7), family)
    assert depth_references(units, family).count(None) == 1  # caps 50 and 3 wait for None
    folds = kfold(len(y), 3)
    with CountingPool() as pool:
        compute = Compute(pool)
        compute.start(units, family.name, X, y, folds, 7)
        assert pool.submitted == 1  # the loosest unit only
        [free] = [u for u in units if u.largest_params["max_depth"] is None]
        first = compute.run(free, family.name, X, y, folds, 7, None)
        assert pool.submitted == 1  # taken from its early start
        again = compute.run(free, family.name, X, y, folds, 7, None)
        assert pool.submitted == 2  # a retry computes it anew
        for unit in units:
            expected = cross_validate_unit(unit, family, X, y, folds, 7, first.folds)
            run = compute.run(unit, family.name, X, y, folds, 7, first.folds)
            assert [r.fold_scores for r in run.results] == [r.fold_scores for r in expected.results]
    assert [r.fold_scores for r in again.results] == [r.fold_scores for r in first.results]
    assert np.isfinite(first.results[0].mean_score)
