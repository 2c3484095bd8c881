"""Classifiers for real: `mlpipe train` through the Prefect flow into MLflow (SQLite), the
champion gate on log loss, and `mlpipe serve` as a process answering /predict and /invocations
as MLflow's pyfunc does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest
from conftest import BIN, assert_same_as_halving_search, background, run_mlpipe
from mlflow import MlflowClient, pyfunc
from sklearn.model_selection import GridSearchCV, train_test_split

from mlpipe.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]

GRID = {"n_estimators": [5, 20], "max_depth": [2, None]}


def diagnoses(folder: Path) -> tuple[Path, pd.DataFrame, pd.Series]:
    """breast_cancer with its classes as words, written as a CSV a user would bring."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    path = folder / "diagnoses.csv"
    frame.to_csv(path, index=False)
    table = pd.read_csv(path)
    return path, table.drop(columns="diagnosis"), table["diagnosis"]


def search_results(workdir: Path, search_id: str | None = None) -> tuple[Path, dict]:
    found = sorted((workdir / "artifacts").glob("*/tuning_results.json"))
    path = next(p for p in found if search_id in (None, p.parent.name))
    return path.parent, json.loads(path.read_text())


def assert_same_as(payload: dict, search: GridSearchCV, greater_is_better: bool) -> None:
    """Each config's mean CV score equals cv_results_ to 1e-9 relative; same best."""
    sign = 1 if greater_is_better else -1
    ours = {json.dumps(t["params"], sort_keys=True): t["mean_score"] for t in payload["trials"]}
    assert len(ours) == len(search.cv_results_["params"])
    for params, theirs in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        assert sign * ours[json.dumps(params, sort_keys=True)] == pytest.approx(theirs, rel=1e-9)
    assert payload["best"]["params"] == search.best_params_


def test_a_binary_classifier_with_word_labels_is_tuned_gated_and_served(train, workdir, postgres):
    from sklearn.ensemble import RandomForestClassifier

    path, X, y = diagnoses(workdir)
    spec = {"seed": 3, "data": {"source": str(path), "target": "diagnosis"},
            "model": {"task": "classification"}, "search": {"params": GRID}}  # fmt: skip
    out = train(spec, "--quiet").output
    assert "registered diagnoses-rf version 1 -> alias champion" in out
    folder, payload = search_results(workdir)

    # GridSearchCV on the same stratified split, scored by log loss
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=3, stratify=y
    )
    search = GridSearchCV(RandomForestClassifier(random_state=3), GRID, cv=3,
                          scoring="neg_log_loss", n_jobs=1).fit(X_train, y_train)  # fmt: skip
    assert payload["task"] == "classification" and payload["scoring"] == "log_loss"
    assert_same_as(payload, search, greater_is_better=False)

    # test metrics, the confusion matrix and the plots, from the refit model
    refit = search.best_estimator_
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(float(np.mean(refit.predict(X_test) == y_test)))
    assert {"log_loss", "f1_macro", "roc_auc", "cv_log_loss"} <= set(metrics)
    confusion = json.loads((folder / "confusion_matrix.json").read_text())
    assert confusion["classes"] == ["benign", "malignant"]
    assert np.sum(confusion["matrix"]) == len(y_test)
    assert np.trace(confusion["matrix"]) == np.sum(refit.predict(X_test) == y_test)
    plots = {p.name for p in (folder / "report").glob("*.png")}
    assert {"confusion_matrix.png", "calibration.png", "roc.png", "precision_recall.png"} <= plots
    profile = json.loads((folder / "model" / "profile.json").read_text())  # drift's reference
    assert [p["name"] for p in profile["probabilities"]] == [
        "probability_benign",
        "probability_malignant",
    ]
    assert "predicted_vs_actual.png" not in plots

    # the registered model: MLflow's pyfunc answers the words; the signature says string
    model = pyfunc.load_model("models:/diagnoses-rf/1")
    assert list(model.predict(X_test.head(4))) == list(refit.predict(X_test.head(4)))
    assert model.metadata.get_output_schema().to_dict() == [
        {"type": "string", "name": "diagnosis", "required": True}
    ]

    # a worse search is registered but does not take the alias: judged on log loss
    spec["search"]["params"] = {"n_estimators": [2], "max_depth": [1]}
    out = train(spec, "--quiet").output
    assert "version 2 -> alias challenger" in out and "test log_loss" in out
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("diagnoses-rf", "champion").version) == "1"
    again = train(spec, "--quiet").output  # nothing new: found by its test log loss
    assert "unchanged" in again and "version 2 already -> alias challenger" in again

    # served from the model folder: labels and probabilities; /invocations is pyfunc's bytes
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlpipe"), "serve", "--port", str(port), "-m", str(folder / "model")]
    with background(args, workdir / "serve.log", f"{url}/ready"):
        described = httpx.get(f"{url}/model").json()  # the probabilities' graph, bit-exact
        assert described["predictor"] == "onnx" and described["parity"]["max_abs_diff"] == 0.0
        rows = X_test.head(5)
        answer = httpx.post(f"{url}/predict", json=rows.to_dict(orient="records")).json()
        assert answer["predictions"] == list(refit.predict(rows))
        expected = refit.predict_proba(rows)
        for got, row in zip(answer["probabilities"], expected, strict=True):
            assert got == dict(zip(["benign", "malignant"], row, strict=True))
        body = {"dataframe_split": rows.to_dict(orient="split")}
        invocations = httpx.post(f"{url}/invocations", json=body).content
        assert invocations == json.dumps({"predictions": model.predict(rows).tolist()}).encode()

    # `mlpipe score` on the user's own file: the label and one probability column per class
    args = ["score", "-m", str(folder / "model"), "-i", str(path), "-o", "out.parquet"]
    scored = run_mlpipe(args, workdir)
    assert scored.returncode == 0, scored.stderr
    out = pd.read_parquet(workdir / "out.parquet")
    assert out["prediction"].tolist() == list(refit.predict(X))
    chances = out[["probability_benign", "probability_malignant"]].to_numpy()
    np.testing.assert_array_equal(chances, refit.predict_proba(X))
    assert "drift: none past the thresholds" in scored.stdout  # features, class, probabilities

    # the database sink gets the same columns: a PostgreSQL table, read back
    table = ["-o", postgres["url"], "--output-table", "diagnoses"]
    stored = run_mlpipe([*args[:-2], *table], workdir, PGPASSWORD=postgres["password"])
    assert stored.returncode == 0, stored.stderr
    dsn = postgres["url"].replace("+psycopg", "")
    with psycopg.connect(dsn, password=postgres["password"]) as conn:
        columns = "prediction, probability_benign, probability_malignant"
        rows = conn.execute(f'SELECT {columns} FROM diagnoses ORDER BY "row"').fetchall()
    assert [r[0] for r in rows] == out["prediction"].tolist()
    np.testing.assert_array_equal([r[1:] for r in rows], chances)


def assert_served_fast(uri: str, X: pd.DataFrame, native) -> None:
    """mlpipe's loader serves the registered booster from its ONNX graph: probabilities within
    the parity tolerance of ``predict_proba``, the same labels (codes for XGBoost, as pyfunc)."""
    from mlpipe.fastpath import PARITY_TOLERANCE
    from mlpipe.predictor import load_model, parse_model_uri

    loaded = load_model(parse_model_uri(uri))
    assert loaded.predictor.kind == "onnx" and loaded.parity.ok, loaded.fallback_reason
    labels, _, proba = loaded.classify(X.to_numpy(dtype=np.float64))
    assert np.max(np.abs(proba - native.predict_proba(X))) <= PARITY_TOLERANCE
    assert labels.tolist() == native.predict(X).tolist()


def test_a_multiclass_xgboost_search_by_macro_f1_equals_grid_search(train, workdir):
    from sklearn.datasets import load_wine
    from xgboost import XGBClassifier

    grid = {"n_estimators": [5, 15], "max_depth": [2, 3]}
    model = {"family": "xgboost", "task": "classification"}
    search = {"params": grid, "scoring": "f1_macro"}
    spec = {"seed": 4, "data": {"source": "wine"}, "model": model, "search": search}
    out = train(spec, "--quiet").output
    assert "registered wine-xgb version 1" in out
    folder, payload = search_results(workdir)
    X, y = load_wine(return_X_y=True, as_frame=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=4, stratify=y)
    reference = GridSearchCV(XGBClassifier(random_state=4, n_jobs=1), grid, cv=3,
                             scoring="f1_macro", n_jobs=1).fit(X_train, y_train)  # fmt: skip
    assert payload["scoring"] == "f1_macro"
    assert_same_as(payload, reference, greater_is_better=True)
    plots = {p.name for p in (folder / "report").glob("*.png")}
    assert {"confusion_matrix.png", "calibration.png"} <= plots and "roc.png" not in plots
    version = MlflowClient().get_model_version("wine-xgb", "1")
    assert float(version.tags["mlpipe.test_f1_macro"]) > 0.8
    assert_served_fast(
        "models:/wine-xgb/1", X, pyfunc.load_model("models:/wine-xgb/1").get_raw_model()
    )


def test_a_halving_search_of_a_classifier_equals_halving_grid_search_cv(train, workdir):
    """Rows as resource: scikit-learn's smallest rung is 2 * cv * n_classes rows (here 18),
    the folds are stratified before rows are drawn, the ranking is by accuracy (higher is
    better)."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    grid = {"max_depth": [None, 3, 6], "min_samples_leaf": [1, 4], "max_features": [0.5, 1.0],
            "n_estimators": [10]}  # fmt: skip
    search = {"strategy": "halving", "params": grid, "scoring": "accuracy"}
    spec = {"seed": 4, "data": {"source": "wine"}, "model": {"task": "classification"},
            "search": search}  # fmt: skip
    train(spec, "--quiet")
    _, payload = search_results(workdir)
    X, y = load_wine(return_X_y=True, as_frame=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=4, stratify=y)
    reference = HalvingGridSearchCV(
        RandomForestClassifier(random_state=4), grid, cv=3, factor=3,
        scoring="accuracy", random_state=4, n_jobs=1,
    ).fit(X_train, y_train)  # fmt: skip
    assert reference.n_resources_ == [18, 54]
    assert_same_as_halving_search(payload, reference, greater_is_better=True)
    # on 18 rows a fold can lack a class: log loss is refused there (NaN), accuracy stands
    rung0 = [t for t in payload["trials"] if t["rung"] == 0]
    assert any(None in t["fold_metrics"]["log_loss"] for t in rung0)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_lightgbm_search_equals_grid_search_and_registers(train, workdir, task):
    """LightGBM end to end for both tasks: every config's CV score equals GridSearchCV's (its
    rounds scored as prefixes of one fit), the model is registered with skops and MLflow's own
    pyfunc predicts with it."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from sklearn import datasets

    grid = {"n_estimators": [10, 40], "num_leaves": [7, 15], "min_child_samples": [5]}
    source, estimator = "diabetes", LGBMRegressor
    if task == "classification":
        source, estimator = "wine", LGBMClassifier
    spec = {"seed": 2, "data": {"source": source}, "model": {"family": "lightgbm", "task": task},
            "search": {"params": grid}}  # fmt: skip
    out = train(spec, "--quiet").output
    assert f"registered {source}-lgbm version 1" in out
    folder, payload = search_results(workdir)
    X, y = getattr(datasets, f"load_{source}")(return_X_y=True, as_frame=True)
    stratify = y if task == "classification" else None
    X_train, X_test, y_train, _ = train_test_split(
        X, y, test_size=0.2, random_state=2, stratify=stratify
    )
    scoring = "neg_log_loss" if task == "classification" else "neg_mean_squared_error"
    reference = GridSearchCV(estimator(random_state=2, n_jobs=1, verbose=-1), grid, cv=3,
                             scoring=scoring, n_jobs=1).fit(X_train, y_train)  # fmt: skip
    assert_same_as(payload, reference, greater_is_better=False)
    model = pyfunc.load_model(f"models:/{source}-lgbm/1")
    expected = reference.best_estimator_.predict(X_test.head(5))
    np.testing.assert_allclose(model.predict(X_test.head(5)), expected, rtol=1e-12)
    assert "lightgbm.basic.Booster" in (folder / "model" / "MLmodel").read_text()
    if task == "classification":
        assert_served_fast(f"models:/{source}-lgbm/1", X, model.get_raw_model())
    else:  # the regressor's ONNX graph too (float32, within the parity tolerance)
        from mlpipe.predictor import load_model, parse_model_uri

        assert load_model(parse_model_uri(f"models:/{source}-lgbm/1")).predictor.kind == "onnx"
