"""Classification in-process: labels, stratified splits and folds, scorings equal to
scikit-learn's, the spec's and the data's refusals."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split

from mlpipe.data import check_classes, load_dataset, split_dataset
from mlpipe.errors import DataError, SpecError
from mlpipe.scoring import SCORINGS, allowed
from mlpipe.search import plan_units
from mlpipe.spec import DataSpec, Spec, load_spec
from mlpipe.trial import cross_validate_unit, cv_folds
from mlpipe.tune.plan import prepare

GRID = {"n_estimators": [4, 9], "max_depth": [2, None]}


def classifier_spec(source: str, family: str, scoring: str | None = None, **search) -> Spec:
    return Spec.model_validate(
        {
            "seed": 5,
            "data": {"source": source},
            "model": {"family": family, "task": "classification"},
            "search": {"params": GRID, "scoring": scoring, **search},
        }
    )


def table(tmp_path, labels) -> DataSpec:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=len(labels)), "b": rng.normal(size=len(labels))})
    frame["label"] = labels
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    return DataSpec(source=str(path), target="label")


@pytest.mark.parametrize(
    ("source", "family"),
    [("breast_cancer", "random_forest"), ("breast_cancer", "xgboost"),
     ("wine", "random_forest"), ("wine", "xgboost")],
)  # fmt: skip
def test_every_scoring_equals_grid_search_cv(source, family):
    """Binary and multiclass, each scoring: every config's mean CV score equals GridSearchCV's
    cv_results_ to 1e-9 relative (signs as the user reads them), and the best is the same."""
    names = [n for n in allowed("classification") if not (n == "roc_auc" and source == "wine")]
    for name in names:
        spec = classifier_spec(source, family, name)
        plan = prepare(spec)
        X, y = plan.split.train_arrays
        results = []
        for unit in plan_units(plan.trials, spec.family):
            results += cross_validate_unit(unit, spec.family, X, y, plan.folds, spec.seed).results
        results.sort(key=lambda r: r.index)
        labels = plan.split.y_train.astype(int)
        if spec.family.any_labels:
            labels = plan.dataset.decode(plan.split.y_train)
        search = GridSearchCV(spec.family.build({}, spec.seed), GRID, cv=3, n_jobs=1,
                              scoring=SCORINGS[name].sklearn)  # fmt: skip
        search.fit(plan.split.X_train, labels)
        sign = 1 if SCORINGS[name].greater_is_better else -1
        for ours, params, theirs in zip(
            results, search.cv_results_["params"], search.cv_results_["mean_test_score"],
            strict=True,
        ):  # fmt: skip
            assert ours.params == params and ours.scoring == name
            assert sign * ours.mean_score == pytest.approx(theirs, rel=1e-9, abs=0)
        best = min(results, key=lambda r: (r.loss, r.index))
        assert best.params == search.best_params_, name


def test_splits_and_folds_are_stratified_as_scikit_learn_makes_them():
    spec = classifier_spec("iris", "random_forest")
    dataset = load_dataset(spec.data, spec.seed, "classification")
    split = split_dataset(dataset, 0.2, spec.seed)
    X, y = dataset.X, dataset.decode(dataset.y)
    X_train, X_test, _, _ = train_test_split(X, y, test_size=0.2, random_state=5, stratify=y)
    assert list(split.X_train.index) == list(X_train.index)
    assert list(split.X_test.index) == list(X_test.index)
    ours = cv_folds(split.y_train.to_numpy(), 3, "classification")
    theirs = StratifiedKFold(n_splits=3).split(X_train, dataset.decode(split.y_train))
    for (a_train, a_test), (b_train, b_test) in zip(ours, theirs, strict=True):
        assert list(a_train) == list(b_train) and list(a_test) == list(b_test)


@pytest.mark.parametrize(
    "labels",
    [["no", "yes", "maybe"] * 10, [True, False] * 15, [3, 7, 11] * 10],
    ids=["strings", "booleans", "integers"],
)
def test_labels_become_codes_in_sorted_order_and_back(tmp_path, labels):
    dataset = load_dataset(table(tmp_path, labels), 0, "classification")
    assert list(dataset.classes) == sorted(set(labels))
    assert set(dataset.y) == set(range(len(set(labels))))
    assert list(dataset.decode(dataset.y)) == labels


def test_a_label_target_asked_to_regress_suggests_classification(tmp_path):
    for labels in (["a", "b"] * 10, [True, False] * 10):
        with pytest.raises(DataError, match=r"set model\.task: classification"):
            load_dataset(table(tmp_path, labels), 0)


def test_bad_classification_targets_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(DataError, match="one class"):
        load_dataset(table(tmp_path, ["x"] * 20), 0, "classification")
    with pytest.raises(DataError, match=r"non-integer values.*model\.task: regression"):
        load_dataset(table(tmp_path, np.linspace(0, 1, 20)), 0, "classification")
    rare = load_dataset(table(tmp_path, ["common"] * 40 + ["rare"] * 3), 0, "classification")
    split = split_dataset(rare, 0.25, 0)
    with pytest.raises(DataError, match=r"class 'rare' has 2 row\(s\).*search.cv=3"):
        check_classes(rare, split.y_train, 3, "log_loss")
    lone = load_dataset(table(tmp_path, ["common"] * 40 + ["lone"]), 0, "classification")
    with pytest.raises(DataError, match="class 'lone' has 1 row"):
        split_dataset(lone, 0.25, 0)


def test_roc_auc_on_three_classes_names_roc_auc_ovr():
    with pytest.raises(DataError, match=r"roc_auc scores two classes.*use roc_auc_ovr"):
        prepare(classifier_spec("wine", "random_forest", "roc_auc"))


@pytest.mark.parametrize(
    ("task", "scoring", "source"),
    [("regression", "roc_auc", "boston"), ("classification", "mse", "iris"),
     ("regression", "accuracy", "diabetes"), ("classification", "nonsense", "iris")],
)  # fmt: skip
def test_a_scoring_of_another_task_names_the_allowed_ones(tmp_path, task, scoring, source):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"data: {{source: {source}}}\nmodel: {{task: {task}}}\nsearch: {{scoring: {scoring}}}\n"
    )
    with pytest.raises(SpecError, match=f"does not score {task}; use one of") as caught:
        load_spec(spec)
    assert ", ".join(allowed(task)) in str(caught.value)


def test_a_classification_source_asked_to_regress_is_refused():
    with pytest.raises(ValueError, match="breast_cancer: a classification table"):
        Spec.model_validate({"data": {"source": "breast_cancer"}})


def test_a_regression_search_keeps_its_ids_and_a_classifier_gets_its_own():
    regression = Spec()
    assert regression.family.key == "random_forest" and regression.scoring == "mse"
    iris = classifier_spec("iris", "random_forest")
    assert iris.family.key == "random_forest:classification:log_loss"
    accuracy = classifier_spec("iris", "random_forest", "accuracy")
    assert prepare(iris).search_id != prepare(accuracy).search_id


def test_a_fold_that_lacked_a_class_gets_nan_where_scikit_learn_refuses_and_ranks_last():
    """A model fitted without class 2 has two probability columns: log loss and ROC AUC are
    refused (NaN, as GridSearchCV's error_score records them), accuracy and F1 stand; the
    result survives its trip through JSON, and a NaN mean ranks after every number."""
    from mlpipe.scoring import classification_metrics
    from mlpipe.search import ranked
    from mlpipe.trial import TrialResult

    y_true = np.array([0, 1, 2, 2])
    metrics = classification_metrics(y_true, np.array([0, 1, 1, 1]), np.full((4, 2), 0.5))
    assert np.isnan(metrics["log_loss"]) and np.isnan(metrics["roc_auc"])
    assert metrics["accuracy"] == 0.5
    nan = TrialResult("a", 0, {}, [float("nan"), 0.2], float("nan"), float("nan"),
                      {"log_loss": [float("nan"), 0.2]}, scoring="log_loss")  # fmt: skip
    back = TrialResult.from_json(json.loads(json.dumps(nan.to_json(), allow_nan=False)))
    assert np.isnan(back.fold_scores[0]) and back.fold_metrics["log_loss"][1] == 0.2
    good = TrialResult("b", 1, {}, [0.3], 0.3, 0.0, scoring="log_loss")
    assert [r.trial_id for r in ranked([nan, good])] == ["b", "a"]


def test_the_profile_bins_the_predicted_class_and_each_class_probability():
    from mlpipe.drift import Counts, Profile, build_profile, compare, verdict

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 1))
    codes = np.repeat([0, 1, 2], [40, 100, 60])
    proba = rng.dirichlet([2, 5, 3], size=200)
    names = ["probability_low", "probability_mid", "probability_high"]
    profile = build_profile(
        ["a"], rows, codes, probabilities=dict(zip(names, proba.T, strict=True))
    )
    assert profile.prediction.cuts == [0.5, 1.5]
    assert profile.prediction.shares == [0.2, 0.5, 0.3]
    assert [p.name for p in profile.probabilities] == names
    assert len(profile.probabilities[0].cuts) == 9  # deciles of each class's probability
    assert Profile.from_json(profile.to_json()) == profile

    same = Counts(profile)  # the training rows again: nothing drifted
    same.add(rows, codes, proba)
    assert not compare(same).drifted
    # served traffic whose classes are as often predicted, but far less sure of "high"
    unsure = proba.copy()
    unsure[:, 2] *= 0.2
    counts = Counts(profile)
    counts.add(rows, codes, unsure)
    result = compare(counts)
    assert not result.prediction.drifted and result.drifted_features == []
    assert "probability_high" in result.drifted_outputs and result.drifted
    assert {"drift_psi_probability_high", "drift_psi_prediction"} <= set(result.metrics())
    assert "DRIFT in probability_high" in verdict(result.summary())
    # served traffic predicting class 2 only: the predicted class drifted
    counts = Counts(profile)
    counts.add(rows, np.full(200, 2), proba)
    assert compare(counts).prediction.drifted
    assert verdict(compare(counts).summary()).startswith("DRIFT in")


def test_a_profile_without_probabilities_still_reads_and_counts():
    """A classifier registered before the probabilities were profiled."""
    from mlpipe.drift import Counts, Profile, build_profile, compare

    rows = np.random.default_rng(1).normal(size=(150, 2))
    profile = build_profile(["a", "b"], rows, rows[:, 0])
    raw = json.loads(profile.to_json())
    del raw["probabilities"]
    old = Profile.from_json(json.dumps(raw))
    assert old == profile and old.probabilities == []
    counts = Counts(old)
    counts.add(rows, rows[:, 0], np.zeros((150, 2)))  # probabilities given, none profiled
    assert compare(counts).probabilities == [] and not compare(counts).drifted
