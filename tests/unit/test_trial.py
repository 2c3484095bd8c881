import numpy as np
import pytest
from sklearn.model_selection import cross_val_score

from mlpipe.models import get_family
from mlpipe.scoring import regression_metrics
from mlpipe.search import depth_references, make_trials, plan_units
from mlpipe.trial import (
    Warm,
    cross_validate_unit,
    failed_results,
    kfold,
)


@pytest.fixture(scope="module")
def xy():
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=120, n_features=5, noise=5.0, random_state=0)
    return X, y


@pytest.mark.parametrize(
    ("family_name", "params"),
    [
        ("random_forest", {"n_estimators": [3, 7, 12], "max_depth": [4]}),
        ("extra_trees", {"n_estimators": [3, 7, 12], "max_features": [0.6]}),
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
    results = cross_validate_unit(unit, family, X, y, kfold(len(y), 3), seed=11).results
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
        cross_validate_unit(unit, family, X, y, kfold(len(y), 3), seed=0)
    [failed] = failed_results(unit, info.value)
    assert failed.status == "failed" and "max_features" in failed.error
    assert failed.to_json()["mean_score"] is None


def test_regression_metrics():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mse"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx((4 / 3) ** 0.5)
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)


def sklearn_fold_scores(family, params, X, y, seed):
    return -cross_val_score(
        family.build(params, seed), X, y, cv=3, scoring="neg_mean_squared_error"
    )


def test_configs_under_the_split_floor_share_one_fit_with_scikit_learns_scores(xy):
    """scikit-learn raises min_samples_split to 2 * min_samples_leaf: 2 and 5 with a leaf of 4
    grow the same forest, so they form one unit; each still gets scikit-learn's own scores."""
    from sklearn.model_selection import ParameterGrid

    X, y = xy
    family = get_family("random_forest")
    space = {"n_estimators": [4, 8], "min_samples_split": [2, 5, 10], "min_samples_leaf": [4]}
    trials = make_trials(list(ParameterGrid(space)), family.name, "fp", 3, 5)
    units = plan_units(trials, family)
    assert sorted(len(u.trials) for u in units) == [2, 4]  # split 10 stands apart
    for unit in units:
        for r in cross_validate_unit(unit, family, X, y, kfold(len(y), 3), seed=5).results:
            expected = sklearn_fold_scores(family, r.params, X, y, 5)
            np.testing.assert_allclose(r.fold_scores, expected, rtol=1e-12)


@pytest.mark.parametrize("family_name", ["random_forest", "extra_trees"])
def test_a_depth_cap_the_trees_never_reach_reuses_the_uncapped_fit_exactly(xy, family_name):
    """A unit whose cap lies above the depth the uncapped trees reached takes their fit; a cap
    they reach is fitted: both give scikit-learn's own scores for that cap, fold by fold."""
    X, y = xy
    family = get_family(family_name)
    folds = kfold(len(y), 3)
    free = make_trials([{"n_estimators": 6, "max_depth": None}], family.name, "fp", 3, 9)
    [free_unit] = plan_units(free, family)
    reference = cross_validate_unit(free_unit, family, X, y, folds, seed=9)
    reached = [fold.depth for fold in reference.folds]
    assert all(d is not None and d > 3 for d in reached)

    space = [{"n_estimators": 6, "max_depth": cap} for cap in (max(reached) + 1, 3, max(reached))]
    trials = make_trials(space, family.name, "fp", 3, 9)
    units = sorted(plan_units(trials, family), key=lambda u: u.trials[0].index)
    assert depth_references([free_unit, *units], family) == [None, 0, 0, 0]
    above, below, at = (
        cross_validate_unit(u, family, X, y, folds, 9, reference.folds) for u in units
    )
    assert [f.seconds for f in above.folds] == [0.0, 0.0, 0.0]  # all three folds reused
    assert all(f.seconds > 0 for f in below.folds)  # a cap the trees reach: fitted
    # a cap equal to the depth reached is fitted too (a leaf there may have been tried)
    assert [f.seconds == 0.0 for f in at.folds] == [d < max(reached) for d in reached]
    for run in (above, below, at):
        [r] = run.results
        expected = sklearn_fold_scores(family, r.params, X, y, 9)
        np.testing.assert_allclose(r.fold_scores, expected, rtol=1e-12)


def test_boosting_has_no_depth_shortcut():
    family = get_family("xgboost")
    trials = make_trials([{"max_depth": 2}, {"max_depth": 6}], family.name, "fp", 3, 0)
    assert depth_references(plan_units(trials, family), family) == [None, None]


@pytest.mark.parametrize(
    ("family_name", "params", "grows"),
    [
        ("random_forest", {"max_depth": 4}, True),
        ("extra_trees", {"min_samples_leaf": 2}, True),
        ("xgboost", {"max_depth": 3}, True),
        ("xgboost", {"max_depth": 3, "subsample": 0.8}, False),  # rounds would differ
    ],
)
def test_a_halving_survivor_grows_its_earlier_models_to_the_same_scores(
    xy, tmp_path, family_name, params, grows
):
    """With ``Warm``, a candidate's next rung grows its fold models of the rung before (only
    the new members are fitted) where that is exact, else fits from scratch; the scores equal
    a fit from scratch either way, and what is kept has the rung's members."""
    import pickle

    X, y = xy
    family, folds, warm = get_family(family_name), kfold(len(y), 3), Warm(str(tmp_path), last=63)

    def unit(size: int):
        [only] = plan_units(make_trials([{**params, "n_estimators": size}], family.name, "fp",
                                        3, 11), family)  # fmt: skip
        return only

    cross_validate_unit(unit(7), family, X, y, folds, 11, warm=warm)
    first_models = {p: p.read_bytes() for p in tmp_path.glob("*.pkl")}
    grown = cross_validate_unit(unit(21), family, X, y, folds, 11, warm=warm)
    fresh = cross_validate_unit(unit(21), family, X, y, folds, 11)
    assert grown.results[0].fold_scores == fresh.results[0].fold_scores
    kept = sorted(tmp_path.glob("*.pkl"))
    assert len(kept) == 3 and set(kept) == set(first_models)  # one per fold, replaced
    for path in kept:
        model = pickle.loads(path.read_bytes())
        members = len(model.estimators_) if family_name != "xgboost" else (
            model.get_booster().num_boosted_rounds())  # fmt: skip
        assert members == 21
    x_train = X[folds[0][0]]
    old = pickle.loads(first_models[kept[0]])
    assert (family.grow(old, 21, x_train, y[folds[0][0]]) is not None) == grows
