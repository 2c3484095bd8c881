import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

from mlpipe.models import get_family
from mlpipe.search import make_trials, plan_units
from mlpipe.trial import failed_results, kfold, regression_metrics, run_unit


@pytest.fixture(scope="module")
def xy():
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=120, n_features=5, noise=5.0, random_state=0)
    return X, y


@pytest.mark.parametrize(
    ("family_name", "params"),
    [
        ("random_forest", {"n_estimators": [3, 7, 12], "max_depth": [4]}),
        ("xgboost", {"n_estimators": [5, 20], "max_depth": [2], "subsample": [0.8]}),
    ],
)
def test_prefix_scoring_equals_separate_fits(xy, family_name, params):
    """One fit of the largest ensemble scores every smaller size exactly."""
    from sklearn.model_selection import ParameterGrid

    X, y = xy
    family = get_family(family_name)
    trials = make_trials(list(ParameterGrid(params)), family_name, "fp", 3, 11)
    [unit] = plan_units(trials, family)
    results = run_unit(unit, family, X, y, kfold(len(y), 3), seed=11)
    for r in results:
        expected = -cross_val_score(
            family.build(r.params, 11), X, y, cv=3, scoring="neg_mean_squared_error"
        )
        np.testing.assert_allclose(r.fold_scores, expected, rtol=1e-9)
        assert r.mean_score == pytest.approx(expected.mean(), rel=1e-9)
        assert set(r.fold_metrics) == {"mse", "rmse", "mae", "r2"}
        assert r.status == "completed" and r.fit_seconds > 0


def test_a_failing_unit_raises_and_is_recorded(xy):
    X, y = xy
    family = get_family("random_forest")
    [unit] = plan_units(make_trials([{"max_features": 7.5}], family.name, "fp", 3, 0), family)
    with pytest.raises(ValueError, match="max_features") as info:
        run_unit(unit, family, X, y, kfold(len(y), 3), seed=0)
    [failed] = failed_results(unit, info.value)
    assert failed.status == "failed" and "max_features" in failed.error
    assert failed.to_json()["mean_score"] is None


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mse"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)
