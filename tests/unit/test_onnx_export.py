"""ONNX graphs of tree models against the models themselves (no MLflow, no server)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeRegressor
from xgboost import XGBClassifier, XGBRegressor

from mlpipe.fastpath import PARITY_TOLERANCE, OnnxPredictor
from mlpipe.onnx_export import ConversionError, to_onnx


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(400, 6)) * [1, 10, 100, 0.01, 1e4, 1], columns=list("abcdef"))
    y = X["a"] * 3 + np.sin(X["b"]) + X["c"] / 50 + rng.normal(size=400)
    probe = rng.normal(size=(2000, 6)) * [1, 10, 100, 0.01, 1e4, 1] * 1.3
    return X, y, probe


@pytest.mark.parametrize(
    "model",
    [
        RandomForestRegressor(n_estimators=30, random_state=0, n_jobs=1),
        RandomForestRegressor(n_estimators=7, max_depth=3, min_samples_leaf=5, random_state=1),
        DecisionTreeRegressor(random_state=0),
        DecisionTreeRegressor(max_depth=0 + 1, random_state=0),
        ExtraTreesRegressor(n_estimators=20, min_samples_leaf=2, random_state=3, n_jobs=1),
    ],
    ids=["forest", "shallow-forest", "tree", "stump", "extra-trees"],
)
def test_scikit_learn_trees_are_bit_for_bit(data, model):
    X, y, probe = data
    model.fit(X, y)
    fast = OnnxPredictor(to_onnx(model, X.shape[1]))
    expected = model.predict(pd.DataFrame(probe, columns=X.columns))
    assert np.array_equal(fast.predict(probe), expected)
    assert np.array_equal(fast.predict(probe[:1]), expected[:1])


def test_a_one_leaf_tree(data):
    X, _, probe = data
    model = RandomForestRegressor(n_estimators=3, random_state=0).fit(X, np.full(len(X), 4.25))
    fast = OnnxPredictor(to_onnx(model, X.shape[1]))
    assert fast.predict(probe[:5]).tolist() == [4.25] * 5


@pytest.mark.parametrize(
    "model",
    [XGBRegressor(n_estimators=60, max_depth=4, n_jobs=1, random_state=0),
     LGBMRegressor(n_estimators=60, num_leaves=15, n_jobs=1, random_state=0, verbose=-1)],
    ids=["xgboost", "lightgbm"],
)  # fmt: skip
def test_boosters_match_to_float32_rounding(data, model):
    X, y, probe = data
    model.fit(X, y)
    fast = OnnxPredictor(to_onnx(model, X.shape[1]))
    expected = model.predict(pd.DataFrame(probe, columns=X.columns))
    diff = np.max(np.abs(fast.predict(probe) - expected))
    assert diff <= PARITY_TOLERANCE * np.max(np.abs(expected))


def test_other_models_have_no_onnx_form(data):
    X, y, _ = data
    with pytest.raises(ConversionError, match="LinearRegression"):
        to_onnx(LinearRegression().fit(X, y), X.shape[1])


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("forest", [RandomForestClassifier, ExtraTreesClassifier])
def test_forest_classifiers_give_the_probabilities_bit_for_bit_and_the_same_labels(
    data, forest, n_classes
):
    X, y, probe = data
    labels = np.asarray(["low", "mid", "high"])[np.digitize(y, np.quantile(y, [0.4, 0.7]))]
    if n_classes == 2:
        labels = np.where(labels == "low", "low", "other")
    model = forest(n_estimators=25, min_samples_leaf=2, random_state=0, n_jobs=1).fit(X, labels)
    fast = OnnxPredictor(to_onnx(model, X.shape[1]))
    frame = pd.DataFrame(probe, columns=X.columns)
    proba = fast.predict(probe)
    assert proba.shape == (len(probe), n_classes)
    assert np.array_equal(proba, model.predict_proba(frame))
    assert np.array_equal(fast.predict(probe[:1]), model.predict_proba(frame.head(1)))
    assert np.array_equal(model.classes_[np.argmax(proba, axis=1)], model.predict(frame))


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("booster", [XGBClassifier, LGBMClassifier])
def test_boosted_classifiers_give_the_probabilities_to_float32_rounding_and_the_same_labels(
    data, booster, n_classes
):
    """onnxmltools' graphs (no ZipMap): ``probabilities`` within the parity tolerance of
    ``predict_proba`` (1e-4; float32 rounding is ~1e-7), and its argmax is ``predict``."""
    X, y, probe = data
    codes = np.digitize(y, np.quantile(y, [0.4, 0.7]))
    if n_classes == 2:
        codes = (codes > 0).astype(int)
    quiet = {"verbose": -1} if booster is LGBMClassifier else {}
    model = booster(n_estimators=30, max_depth=3, n_jobs=1, random_state=0, **quiet)
    model.fit(X, codes)
    fast = OnnxPredictor(to_onnx(model, X.shape[1]))
    frame = pd.DataFrame(probe, columns=X.columns)
    proba, expected = fast.predict(probe), model.predict_proba(frame)
    assert proba.shape == (len(probe), n_classes)
    assert np.max(np.abs(proba - expected)) <= PARITY_TOLERANCE
    assert np.max(np.abs(fast.predict(probe[:1]) - expected[:1])) <= PARITY_TOLERANCE
    assert np.array_equal(np.argmax(proba, axis=1), model.predict(frame))
