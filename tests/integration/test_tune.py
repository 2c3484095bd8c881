"""The tune flow for real: Prefect (the session's server), MLflow (SQLite), registry, files on
disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    HALVING_GRID,
    TPE_SPEC,
    assert_same_as_halving_grid_on_boston,
    assert_same_as_halving_search,
    boston,
)
from mlflow import MlflowClient
from sklearn.model_selection import GridSearchCV, train_test_split

# the in-process `mlpipe train` sets MLflow's global URIs: put them back after the module
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]


def results_of(workdir: Path) -> tuple[Path, dict]:
    [path] = (workdir / "artifacts").glob("*/tuning_results.json")
    return path.parent, json.loads(path.read_text())


def grid_search(estimator, X, y, grid, seed, cv=3):
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=seed)
    search = GridSearchCV(estimator, grid, cv=cv, scoring="neg_mean_squared_error", n_jobs=1)
    return search.fit(X_train, y_train)


def assert_same_as_grid_search(payload: dict, search) -> None:
    """Every config's mean CV MSE equals cv_results_ to 1e-9 relative; same best params."""
    ours = {json.dumps(t["params"], sort_keys=True): t["mean_score"] for t in payload["trials"]}
    assert len(ours) == len(search.cv_results_["params"])
    for params, neg_mse in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        assert ours[json.dumps(params, sort_keys=True)] == pytest.approx(-neg_mse, rel=1e-9, abs=0)
    assert payload["best"]["params"] == search.best_params_
    assert payload["best"]["mean_score"] == pytest.approx(-search.best_score_, rel=1e-9)


BOSTON_GRID = {"n_estimators": [5, 15, 30], "max_depth": [None, 4], "min_samples_leaf": [1, 4]}


def test_boston_search_is_tracked_registered_and_equals_grid_search(train, workdir):
    from sklearn.ensemble import RandomForestRegressor

    result = train({"n_jobs": -1, "search": {"params": BOSTON_GRID}})  # a pool of the cores
    folder, payload = results_of(workdir)

    # the files other tools read
    assert payload["search_id"] == folder.name and payload["scoring"] == "mse"
    assert payload["n_trials"] == 12 and payload["n_failed"] == 0
    trial = payload["trials"][0]
    assert set(trial) >= {
        "trial_id",
        "params",
        "fold_scores",
        "mean_score",
        "std_score",
        "fit_seconds",
        "status",
        "error",
    }
    assert (
        len(trial["fold_scores"]) == 3 and trial["status"] == "completed" and trial["error"] is None
    )
    assert json.loads((folder / "best_params.json").read_text()) == payload["best"]["params"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) >= {"mse", "rmse", "mae", "r2"} and metrics["r2"] > 0.5
    assert {p.name for p in (folder / "report").iterdir()} == {
        "hyperparameters.png",
        "predicted_vs_actual.png",
        "feature_importances.png",
    }
    assert (folder / "model" / "MLmodel").is_file()

    X, y = boston()
    assert_same_as_grid_search(
        payload, grid_search(RandomForestRegressor(random_state=42), X, y, BOSTON_GRID, 42)
    )

    # MLflow: a parent run, one FINISHED child per trial with per-fold metrics, the model version
    client = MlflowClient()
    experiment = client.get_experiment_by_name("boston-rf")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") == payload["parent_run_id"]
    ]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 12 and {c.info.status for c in children} == {"FINISHED"}
    child = children[0]
    assert {
        "cv_mse_mean",
        "cv_mse_std",
        "cv_rmse_mean",
        "cv_mae_mean",
        "cv_r2_mean",
        "fit_seconds",
    } <= set(child.data.metrics)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "cv_mse_fold")] == [
        0,
        1,
        2,
    ]
    assert parent[0].data.metrics["test_mse"] == pytest.approx(metrics["mse"])
    artifacts = {a.path for a in client.list_artifacts(payload["parent_run_id"])}
    assert {"tuning_results.json", "best_params.json", "metrics.json", "report"} <= artifacts

    version = client.get_model_version_by_alias("boston-rf", "champion")
    assert str(version.version) == "1" and version.tags["mlpipe.search_id"] == payload["search_id"]
    assert "alias champion" in result.output and "first version" in result.output

    # the registered model loads with the trusted tree type (skops, not pickle) and predicts
    import mlflow.pyfunc
    import mlflow.sklearn

    model = mlflow.sklearn.load_model("models:/boston-rf@champion")
    assert type(model).__name__ == "RandomForestRegressor"
    pyfunc = mlflow.pyfunc.load_model("models:/boston-rf/1")
    assert pyfunc.metadata.signature is not None
    prediction = pyfunc.predict(boston()[0].head(3))  # the table as pandas reads it
    assert np.all(np.isfinite(prediction)) and len(prediction) == 3
    mlmodel = (folder / "model" / "MLmodel").read_text()
    assert "serialization_format: skops" in mlmodel and "sklearn.tree._tree.Tree" in mlmodel


def test_extra_trees_on_diabetes_equal_grid_search_and_register(train, workdir):
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import ExtraTreesRegressor

    grid = {"n_estimators": [8, 20], "min_samples_split": [2, 10], "max_depth": [None, 6]}
    spec = {"seed": 7, "data": {"source": "diabetes"}, "model": {"family": "extra_trees"},
            "search": {"params": grid}}  # fmt: skip
    out = train(spec, "--quiet")
    assert "registered diabetes-et version 1" in out.output
    folder, payload = results_of(workdir)
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    assert_same_as_grid_search(
        payload, grid_search(ExtraTreesRegressor(random_state=7), X, y, grid, 7)
    )
    # registered with skops and the ONNX fast path; MLflow's own loader predicts the table
    from mlflow import pyfunc

    model = pyfunc.load_model("models:/diabetes-et/1")
    assert len(model.predict(X.head(3))) == 3
    assert (folder / "model" / "onnx" / "model.onnx").is_file()


def test_xgboost_search_equals_grid_search(train, workdir):
    from sklearn.datasets import make_regression
    from xgboost import XGBRegressor

    grid = {"n_estimators": [10, 30], "max_depth": [2, 4], "learning_rate": [0.1]}
    spec = {
        "seed": 3,
        "data": {"source": "synthetic", "rows": 200, "features": 4},
        "model": {"family": "xgboost"},
        "search": {"params": grid},
    }
    train(spec, "--quiet")
    _, payload = results_of(workdir)
    X, y = make_regression(n_samples=200, n_features=4, noise=10.0, random_state=3)
    assert_same_as_grid_search(
        payload, grid_search(XGBRegressor(random_state=3, n_jobs=1), X, y, grid, 3)
    )
    assert (
        str(MlflowClient().get_model_version_by_alias("synthetic-xgb", "champion").version) == "1"
    )


def assert_same_as_randomized_search(payload: dict, search) -> None:
    """The same configs in the same order, each mean CV MSE equal to 1e-9 relative, same best."""
    trials = sorted(payload["trials"], key=lambda t: t["index"])
    drawn = [{k: v.item() if hasattr(v, "item") else v for k, v in p.items()}
             for p in search.cv_results_["params"]]  # fmt: skip
    assert [t["params"] for t in trials] == drawn
    for trial, neg_mse in zip(trials, search.cv_results_["mean_test_score"], strict=True):
        assert trial["mean_score"] == pytest.approx(-neg_mse, rel=1e-9, abs=0)
    assert payload["best"]["params"] == drawn[search.best_index_]
    assert payload["best"]["mean_score"] == pytest.approx(-search.best_score_, rel=1e-9)


def randomized_search(estimator, X, y, space, n_iter, seed, cv=3):
    from sklearn.model_selection import RandomizedSearchCV

    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=seed)
    search = RandomizedSearchCV(estimator, space, n_iter=n_iter, cv=cv, random_state=seed,
                                scoring="neg_mean_squared_error", n_jobs=1)  # fmt: skip
    return search.fit(X_train, y_train)


def test_random_ranges_on_boston_equal_randomized_search_cv(train, workdir):
    from scipy import stats
    from sklearn.ensemble import RandomForestRegressor

    ranges = {
        "n_estimators": {"low": 5, "high": 25},
        "max_features": {"low": 0.3, "high": 1.0},
        "min_impurity_decrease": {"low": 1e-3, "high": 1.0, "log": True},
        "min_samples_leaf": [1, 3],
    }
    train({"seed": 5, "search": {"strategy": "random", "n_trials": 8, "params": ranges}}, "--quiet")
    _, payload = results_of(workdir)
    scipy_space = {
        "n_estimators": stats.randint(5, 26),
        "max_features": stats.uniform(0.3, 0.7),
        "min_impurity_decrease": stats.loguniform(1e-3, 1.0),
        "min_samples_leaf": [1, 3],
    }
    X, y = boston()
    assert_same_as_randomized_search(
        payload, randomized_search(RandomForestRegressor(random_state=5), X, y, scipy_space, 8, 5)
    )


def test_random_ranges_on_xgboost_equal_randomized_search_cv(train, workdir):
    from scipy import stats
    from sklearn.datasets import make_regression
    from xgboost import XGBRegressor

    ranges = {
        "n_estimators": {"low": 10, "high": 40},
        "max_depth": {"low": 2, "high": 5},
        "learning_rate": {"low": 0.02, "high": 0.3, "log": True},
        "subsample": {"low": 0.6, "high": 1.0},
    }
    spec = {
        "seed": 3,
        "data": {"source": "synthetic", "rows": 200, "features": 4},
        "model": {"family": "xgboost"},
        "search": {"strategy": "random", "n_trials": 6, "params": ranges},
    }
    train(spec, "--quiet")
    _, payload = results_of(workdir)
    scipy_space = {
        "n_estimators": stats.randint(10, 41),
        "max_depth": stats.randint(2, 6),
        "learning_rate": stats.loguniform(0.02, 0.3),
        "subsample": stats.uniform(0.6, 0.4),
    }
    X, y = make_regression(n_samples=200, n_features=4, noise=10.0, random_state=3)
    estimator = XGBRegressor(random_state=3, n_jobs=1)
    assert_same_as_randomized_search(payload, randomized_search(estimator, X, y, scipy_space, 6, 3))


def test_halving_on_boston_equals_halving_grid_search_cv(train, workdir):
    train({"seed": 4, "search": {"strategy": "halving", "params": HALVING_GRID}}, "--quiet")
    _, payload = results_of(workdir)
    assert_same_as_halving_grid_on_boston(payload)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("boston-rf")
    runs = client.search_runs([experiment.experiment_id], "tags.`mlpipe.eliminated` = 'true'")
    assert len(runs) == 12 + 4 and {r.data.tags["mlpipe.rung"] for r in runs} == {"0", "1"}


def test_halving_over_trees_on_diabetes_equals_halving_random_search_cv(train, workdir):
    from scipy import stats
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingRandomSearchCV

    space = {"max_features": {"low": 0.3, "high": 1.0}, "min_samples_leaf": [1, 3, 6]}
    spec = {"seed": 7, "data": {"source": "diabetes"},
            "search": {"strategy": "halving", "candidates": "random", "n_trials": 9,
                       "resource": "n_estimators", "max_resources": 24, "factor": 2,
                       "params": space}}  # fmt: skip
    train(spec, "--quiet")
    _, payload = results_of(workdir)
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=7)
    scipy_space = {"max_features": stats.uniform(0.3, 0.7), "min_samples_leaf": [1, 3, 6]}
    search = HalvingRandomSearchCV(
        RandomForestRegressor(random_state=7), scipy_space, n_candidates=9, cv=3, factor=2,
        resource="n_estimators", max_resources=24, scoring="neg_mean_squared_error",
        random_state=7, n_jobs=1,
    )  # fmt: skip
    assert_same_as_halving_search(payload, search.fit(X_train, y_train))
    assert search.n_resources_ == [1, 2, 4, 8]  # "smallest", HalvingRandomSearchCV's default


def test_an_extended_tpe_search_computes_only_the_new_trials(train, workdir):
    short = {**TPE_SPEC, "search": {**TPE_SPEC["search"], "n_trials": 8}}
    train(short, "--quiet")
    _, first = results_of(workdir)
    train(TPE_SPEC, "--quiet")  # 12 trials: the first 8 are the same, told their logged scores
    _, longer = results_of(workdir)
    assert first["search_id"] == longer["search_id"]
    before = {t["trial_id"]: t for t in first["trials"]}
    after = sorted(longer["trials"], key=lambda t: t["index"])
    assert [t["trial_id"] for t in after[:8]] == [t["trial_id"] for t in sorted(
        first["trials"], key=lambda t: t["index"])]  # fmt: skip
    # a reused trial keeps the fit time it was measured with: nothing fitted again
    assert all(t["fit_seconds"] == before[t["trial_id"]]["fit_seconds"] for t in after[:8])
    assert not any(t["trial_id"] in before for t in after[8:])
    # the model-based search's report: its history and Optuna's fANOVA importances
    folder, _ = results_of(workdir)
    assert {"optimization_history.png", "param_importances.png"} <= {
        p.name for p in (folder / "report").iterdir()
    }
    importances = longer["param_importances"]
    assert set(importances) == set(TPE_SPEC["search"]["params"])
    assert sum(importances.values()) == pytest.approx(1.0) and min(importances.values()) >= 0
    again = train(TPE_SPEC, "--quiet")
    assert "unchanged: every trial reused" in again.output


def test_champion_moves_only_when_beaten_and_reruns_reuse_trials(train, workdir):
    weak = {"search": {"params": {"n_estimators": [1], "max_depth": [1]}}}
    strong = {"search": {"params": {"n_estimators": [20], "max_depth": [None]}}}
    client = MlflowClient  # constructed after each run: the URI is the test's own store

    train(weak, "--quiet")
    assert str(client().get_model_version_by_alias("boston-rf", "champion").version) == "1"

    beaten = train(strong, "--quiet")
    assert str(client().get_model_version_by_alias("boston-rf", "champion").version) == "2"
    assert "version 2 -> alias champion" in beaten.output and "beats champion v1" in beaten.output

    runs = len(client().search_runs([client().get_experiment_by_name("boston-rf").experiment_id]))
    again = train(weak)  # same search as the first: its trial reused, its run and version found
    assert "1 reused from an earlier run" in again.output
    assert "unchanged: every trial reused and this search is boston-rf version 1" in again.output
    assert "alias challenger" in again.output and "does not beat champion v2" in again.output
    registry = client()
    assert str(registry.get_model_version_by_alias("boston-rf", "champion").version) == "2"
    assert str(registry.get_model_version_by_alias("boston-rf", "challenger").version) == "1"
    assert len(registry.search_model_versions("name = 'boston-rf'")) == 2  # no new version
    experiment = registry.get_experiment_by_name("boston-rf").experiment_id
    assert len(registry.search_runs([experiment])) == runs  # nor a parent run with copies

    strong_again = train(strong, "--quiet")  # the champion's own search: it stays champion
    assert "version 2 already -> alias champion (already the champion)" in strong_again.output
    other_split = {**weak, "data": {"test_size": 0.3}}  # another split: a new search
    assert "registered boston-rf version 3" in train(other_split, "--quiet").output
    assert "registered boston-rf version 4" in train(weak, "--fresh", "--quiet").output


def test_failed_trials_are_recorded_and_the_search_goes_on(train, workdir):
    # values each valid (the spec checks them one by one) whose pairing scikit-learn refuses
    # only when fitting: max_samples without bootstrap
    grid = {"n_estimators": [5], "bootstrap": [True, False], "max_samples": [0.5]}
    result = train({"search": {"params": grid, "retries": 1}})
    _, payload = results_of(workdir)
    failed = [t for t in payload["trials"] if t["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["params"]["bootstrap"] is False
    assert "cannot be set if `bootstrap=False`" in failed[0]["error"]
    assert failed[0]["mean_score"] is None
    assert payload["best"]["params"]["bootstrap"] is True
    assert "1 failed" in result.output
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("boston-rf").experiment_id],
        filter_string="tags.`mlpipe.status` = 'failed'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def test_the_flow_fails_only_when_every_trial_fails(train, workdir):
    grid = {"n_estimators": [5], "bootstrap": [False], "max_samples": [0.5]}  # see above
    result = train({"search": {"params": grid}}, expect=1)
    assert "all 1 trials failed" in result.output and "bootstrap=False" in result.output


def test_a_table_with_categories_through_halving_tpe_and_the_registry(train, workdir):
    """A table as pandas reads a CSV (strings, empty cells, an id, missing targets): halving over
    trees (the warm-start shortcut) equals HalvingGridSearchCV over the documented pipeline; a
    TPE search's trials equal GridSearchCV over each of them; the registered model is the
    pipeline, and MLflow's pyfunc takes the CSV as pandas reads it, unseen category included."""
    import mlflow
    import pandas as pd
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV
    from tables import documented_pipeline, make_table

    from mlpipe.spec import Spec
    from mlpipe.tune.plan import prepare

    table = make_table(300, seed=2)
    csv = workdir / "houses.csv"
    table.to_csv(csv, index=False)
    data = {"source": str(csv), "target": "y"}
    grid = {"max_depth": [3, None], "min_samples_leaf": [1, 2, 4]}
    spec = {"seed": 6, "data": data,
            "search": {"strategy": "halving", "resource": "n_estimators", "max_resources": 12,
                       "factor": 2, "params": grid}}  # fmt: skip
    result = train(spec, "--quiet")
    assert "order_id left out of the features" in result.output
    assert f"{int(table['y'].isna().sum())} row(s) with no value in 'y'" in result.output
    out, payload = results_of(workdir)
    assert payload["columns"]["kinds"]["city"] == "categorical"
    assert payload["encodings"] == {"city": "one_hot", "size": "one_hot", "shop": "target"}
    assert payload["dropped_rows"] == int(table["y"].isna().sum())
    plan = prepare(Spec.model_validate({"seed": 6, "data": data}))
    columns = plan.dataset.columns
    pipeline = documented_pipeline(
        Spec.model_validate({"seed": 6, "data": data}), columns, plan.split.X_train
    )
    search = HalvingGridSearchCV(
        pipeline, {f"model__{k}": v for k, v in grid.items()}, cv=3, factor=2,
        resource="model__n_estimators", max_resources=12, scoring="neg_mean_squared_error",
        n_jobs=1,
    ).fit(plan.split.X_train, plan.split.y_train)  # fmt: skip
    renamed = {**payload, "trials": [
        {**t, "params": {f"model__{k}": v for k, v in t["params"].items()}}
        for t in payload["trials"]], "best": {
        "params": {f"model__{k}": v for k, v in payload["best"]["params"].items()}}}  # fmt: skip
    assert_same_as_halving_search(renamed, search)
    mapping = json.loads((out / "model" / "columns.json").read_text())
    assert mapping["categories"]["city"] == sorted(set(plan.split.X_train["city"].dropna()))

    frame = pd.read_csv(csv).drop(columns=["y"])
    frame.loc[0, "city"] = "tokyo"  # never seen in training
    model = mlflow.pyfunc.load_model(f"models:/{payload['model_name']}/{payload['model_version']}")
    answers = model.predict(frame)
    assert np.isfinite(answers).all() and len(answers) == len(frame)

    tpe = {"seed": 6, "data": data, "model": {"family": "hist_gradient_boosting"},
           "search": {"strategy": "tpe", "n_trials": 6, "batch_size": 3,
                      "params": {"max_iter": [5, 10], "learning_rate": {"low": 0.05, "high": 0.3},
                                 "max_leaf_nodes": [7, 15]}}}  # fmt: skip
    train(tpe, "--quiet")
    newest = max(
        (workdir / "artifacts").glob("*/tuning_results.json"), key=lambda p: p.stat().st_mtime
    )
    trials = json.loads(newest.read_text())["trials"]
    hgb = documented_pipeline(Spec.model_validate(tpe), columns, plan.split.X_train)
    for trial in trials:
        one = GridSearchCV(hgb, {f"model__{k}": [v] for k, v in trial["params"].items()}, cv=3,
                           scoring="neg_mean_squared_error", n_jobs=1)  # fmt: skip
        one.fit(plan.split.X_train, plan.split.y_train)
        assert trial["mean_score"] == pytest.approx(-one.best_score_, rel=1e-9, abs=0)
