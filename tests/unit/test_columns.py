"""Column kinds in-process: what load decides for each column, the refusals, and every family's
cross-validation on a table with categories equal to GridSearchCV over the documented pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, ParameterGrid
from tables import documented_pipeline, make_table

from mlpipe.columns import (
    BOOLEAN,
    CATEGORICAL,
    NUMERIC,
    CastColumns,
    Columns,
    categories,
    decide_columns,
    prepare,
    profile_codes,
    profiled_categories,
)
from mlpipe.data import load_dataset
from mlpipe.errors import DataError
from mlpipe.scoring import SCORINGS
from mlpipe.search import plan_units
from mlpipe.spec import DataSpec, Spec
from mlpipe.trial import cross_validate_unit, fit_final
from mlpipe.tune.plan import prepare as prepare_search


@pytest.fixture(scope="module")
def table_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("columns") / "houses.parquet"
    make_table().to_parquet(path)
    return str(path)


def test_each_column_gets_its_kind_and_an_identifier_is_left_out():
    table = make_table().drop(columns=["y"])
    columns = decide_columns(table)
    assert columns.kinds == {
        "city": CATEGORICAL, "size": CATEGORICAL, "flag": BOOLEAN, "zone": NUMERIC, "x": NUMERIC,
        "shop": CATEGORICAL,
    }  # fmt: skip
    assert columns.identifiers == ("order_id",)
    declared = decide_columns(table, categorical=["zone", "order_id"], drop=["x"])
    assert declared.kinds["zone"] == CATEGORICAL and declared.integer_coded == ("zone",)
    assert declared.kinds["order_id"] == CATEGORICAL and declared.identifiers == ()
    assert "x" not in declared.kinds and declared.dropped == ("x",)


def test_a_csv_column_of_true_false_with_empty_cells_is_boolean(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("b,x\nTrue,1\n,2\nFalse,3\nTrue,4\n")
    frame = pd.read_csv(path)
    columns = decide_columns(frame)
    assert columns.kinds["b"] == BOOLEAN
    values = prepare(frame, columns)["b"].tolist()
    assert values[0] == 1.0 and np.isnan(values[1]) and values[2] == 0.0


def test_prepare_turns_every_missing_value_into_nan_and_codes_into_strings():
    frame = pd.DataFrame(
        {
            "c": pd.array(["a", None, "b", pd.NA], dtype="string"),
            "z": [3.0, np.nan, 4.0, 3.0],
            "o": ["a", np.nan, None, "b"],
        }
    )
    columns = Columns({"c": CATEGORICAL, "z": CATEGORICAL, "o": CATEGORICAL})
    out = prepare(frame, columns)
    assert all(out[c].dtype == object for c in out)
    assert out["z"].tolist()[0] == "3" and out["z"].tolist()[2] == "4"
    assert out.isna().sum().to_dict() == {"c": 2, "z": 1, "o": 2}
    assert all(v is np.nan or isinstance(v, str) for v in out.to_numpy().ravel())
    # the pipeline's first step is the same function: a JSON row (None, int) casts alike
    step = CastColumns({"c": CATEGORICAL, "z": CATEGORICAL, "o": CATEGORICAL})
    row = step.transform(pd.DataFrame({"c": [None], "z": [3], "o": ["b"]}))
    assert row["c"].isna().all() and row["z"].tolist() == ["3"] and row["o"].tolist() == ["b"]


@pytest.mark.parametrize(
    ("frame", "options", "message"),
    [
        (pd.DataFrame({"d": pd.to_datetime(["2024-01-01"] * 3), "x": [1, 2, 3]}), {},
         "column 'd' holds dates"),
        (pd.DataFrame({"e": [None, None, None], "x": [1, 2, 3]}), {}, "column 'e' is empty"),
        (pd.DataFrame({"c": ["a", "a", "a"], "x": [1, 2, 3]}), {}, "column 'c' has one value"),
        (pd.DataFrame({"x": [1, 2, 3]}), {"categorical": ["nope"]},
         "data.categorical: column 'nope' is not in the table"),
        (pd.DataFrame({"x": [1, 2, 3]}), {"drop": ["nope"]},
         "data.drop: column 'nope' is not in the table"),
        (pd.DataFrame({"x": [1, 2, 3]}), {"drop": ["x"]}, "no feature columns are left"),
    ],
)  # fmt: skip
def test_columns_that_cannot_be_features_are_named_with_what_to_do(frame, options, message):
    with pytest.raises(DataError, match=message):
        decide_columns(frame, **options)


def write(tmp_path, frame: pd.DataFrame) -> str:
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    return str(path)


def test_rows_without_a_target_are_left_out_and_counted(table_path):
    dataset = load_dataset(DataSpec(source=table_path, target="y"), seed=0)
    expected = int(make_table()["y"].isna().sum())
    assert expected > 0 and dataset.dropped_rows == expected
    assert len(dataset.y) == 300 - expected and not dataset.y.isna().any()
    assert dataset.needs_frame and dataset.dtypes["city"] == "object"
    assert dataset.record["dropped_rows"] == expected
    assert dataset.record["columns"]["identifiers"] == ["order_id"]
    assert any("order_id" in note for note in dataset.notes)
    assert any(f"{expected} row(s) with no value in 'y'" in note for note in dataset.notes)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"categorical": ["zone"], "drop": ["zone"]}, "both name 'zone'"),
        ({"categorical": ["y"]}, "data.categorical: 'y' is the target"),
        ({"drop": ["y"]}, "data.drop: 'y' is the target"),
    ],
)
def test_contradictory_column_options_are_refused(table_path, options, message):
    with pytest.raises(DataError, match=message):
        load_dataset(DataSpec(source=table_path, target="y", **options), seed=0)


def test_a_string_regression_target_and_too_few_targets_are_refused(tmp_path):
    frame = make_table(40)
    with pytest.raises(DataError, match="holds labels"):
        load_dataset(DataSpec(source=write(tmp_path, frame), target="city"), seed=0)
    frame.loc[5:, "y"] = np.nan
    with pytest.raises(DataError, match=r"5 row\(s\) have a value in 'y'"):
        load_dataset(DataSpec(source=write(tmp_path, frame), target="y"), seed=0)


def test_a_numeric_table_keeps_its_matrix_and_its_fingerprint():
    """No categories, no booleans: the trials fit the float64 matrix, and the search ids stay
    those of the searches before column kinds (the fingerprint at the commit before them)."""
    dataset = load_dataset(DataSpec(source="boston"), seed=0)
    assert not dataset.needs_frame and dataset.dropped_rows == 0
    assert dataset.fingerprint == "f0246393d1df0bcc"


FORESTS = ("random_forest", "extra_trees")  # one-hot, and a target encoder for 'shop'
SMALL = {
    "random_forest": {"n_estimators": [3, 8], "max_depth": [3, None]},
    "extra_trees": {"n_estimators": [3, 8], "min_samples_leaf": [1, 3]},
    "hist_gradient_boosting": {"max_iter": [5, 12], "max_leaf_nodes": [7, 15]},
    "xgboost": {"n_estimators": [5, 12], "max_depth": [2, 4]},
    "lightgbm": {"n_estimators": [5, 12], "num_leaves": [7, 15]},
}


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("family", list(SMALL))
def test_every_family_on_categories_equals_grid_search_cv_over_its_pipeline(tmp_path, family, task):
    """The encoder is fitted in each fold, as GridSearchCV fits a pipeline's: every config's
    mean CV score equals cv_results_ to 1e-9 relative, with the shortcuts (one fit per unit
    scores every size), and the refit model predicts the same as the pipeline refitted."""
    frame = make_table(240, seed=1)
    target = "y"
    if task == "classification":
        frame["label"] = np.where(frame["y"] > frame["y"].median(), "high", "low")
        frame.loc[frame["y"].isna(), "label"] = None
        frame, target = frame.drop(columns=["y"]), "label"
    spec = Spec.model_validate(
        {
            "seed": 3,
            "data": {"source": write(tmp_path, frame), "target": target},
            "model": {"family": family, "task": task},
            "search": {"params": SMALL[family]},
        }
    )
    plan = prepare_search(spec)
    X, y = plan.split.train_arrays
    assert isinstance(X, pd.DataFrame)
    results = []
    for unit in plan_units(plan.trials, spec.family):
        results += cross_validate_unit(unit, spec.family, X, y, plan.folds, spec.seed).results
    results.sort(key=lambda r: r.index)
    pipeline = documented_pipeline(spec, plan.dataset.columns, plan.split.X_train)
    steps = [name for name, *_ in pipeline.named_steps["encode"].transformers]
    assert steps == (["categories", "targets"] if family in FORESTS else ["categories"])
    grid = {f"model__{k}": v for k, v in SMALL[family].items()}
    labels = plan.split.y_train.to_numpy()
    if task == "classification" and spec.family.any_labels:
        labels = plan.dataset.decode(labels)
    search = GridSearchCV(pipeline, grid, cv=plan.folds, n_jobs=1,
                          scoring=SCORINGS[spec.scoring].sklearn)  # fmt: skip
    search.fit(plan.split.X_train, labels)
    sign = 1 if SCORINGS[spec.scoring].greater_is_better else -1
    assert [r.params for r in results] == list(ParameterGrid(SMALL[family]))
    for ours, theirs in zip(results, search.cv_results_["mean_test_score"], strict=True):
        assert sign * ours.mean_score == pytest.approx(theirs, rel=1e-9, abs=0)
    best = min(results, key=lambda r: (r.loss, r.index))
    assert {f"model__{k}": v for k, v in best.params.items()} == search.best_params_
    model = fit_final(spec.family, best.params, plan.split.X_train, labels, spec.seed,
                      plan.dataset.columns)  # fmt: skip
    assert np.array_equal(
        model.predict(plan.split.X_test), search.best_estimator_.predict(plan.split.X_test)
    )


def test_unseen_and_missing_categories_are_scored_never_refused(table_path):
    """A category the training split never saw, and None, go to the family's rule: the
    infrequent column (one-hot), or missing (native codes)."""
    dataset = load_dataset(DataSpec(source=table_path, target="y"), seed=0)
    columns = dataset.columns
    rows = pd.DataFrame(
        {"city": ["tokyo", None], "size": ["xl", "m"], "flag": [True, None],
         "zone": [99, 3], "x": [0.5, None], "shop": ["shop-999", None]}
    )  # fmt: skip
    for family in ("random_forest", "hist_gradient_boosting", "xgboost", "lightgbm"):
        spec = Spec.model_validate({"model": {"family": family}})
        size = {spec.family.size_param: 5}
        model = fit_final(spec.family, size, dataset.X, dataset.y, 0, columns)
        assert np.isfinite(model.predict(rows)).all(), family


def test_the_mapping_and_the_profile_codes_follow_the_training_split(table_path):
    dataset = load_dataset(DataSpec(source=table_path, target="y"), seed=0)
    mapping = categories(dataset.X, dataset.columns)
    assert mapping["city"] == sorted({c for c in dataset.X["city"] if isinstance(c, str)})
    profiled = profiled_categories(dataset.X, dataset.columns, 2)
    assert profiled["city"] == ["paris", "rome"]  # the two most frequent
    codes = profile_codes(
        pd.DataFrame({"city": ["rome", "lima", np.nan], "x": [1.0, 2.0, 3.0]}), profiled
    )
    assert codes[:, 0].tolist()[:2] == [1.0, 2.0] and np.isnan(codes[2, 0])
    assert codes[:, 1].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("family", list(SMALL))
def test_the_fast_path_of_a_one_hot_pipeline_equals_it_and_native_splits_have_none(
    tmp_path, family, task
):
    """Forests: the contract's codes through the encoding tables (one-hot columns, target
    encodings) and the forest's graph equal the pipeline's own answers bit for bit (unseen and
    missing categories, missing numbers).
    The families of native categorical splits write no fast path (no exact converter)."""
    from mlpipe.contract import InputContract
    from mlpipe.fastpath import ENCODING_FILE, EncodedOnnxPredictor, export_fast_path

    frame = make_table(240, seed=5)
    target = frame["y"].fillna(0)
    if task == "classification":  # three classes: the target encoder's column per class
        target = np.asarray(pd.qcut(target, 3, labels=["low", "mid", "high"]).astype(str))
    X = frame.drop(columns=["y", "order_id"])
    columns = decide_columns(X)
    prepared = prepare(X, columns)
    spec = Spec.model_validate({"model": {"family": family, "task": task}})
    if task == "classification" and not spec.family.any_labels:  # XGBoost: the codes
        target = np.unique(target, return_inverse=True)[1]
    model = fit_final(spec.family, {spec.family.size_param: 7}, prepared, target, 0, columns)
    mapping = categories(prepared, columns)
    loaded = X.astype({"flag": "boolean"}).iloc[:60].copy()
    loaded.loc[loaded.index[:3], "city"] = ["tokyo", None, "rome"]
    loaded.loc[loaded.index[3], "x"] = np.nan
    loaded.loc[loaded.index[4:6], "shop"] = ["shop-999", None]
    folder = export_fast_path(model, 0, loaded, tmp_path, "m-1", categories=mapping)
    if family not in FORESTS:
        assert folder is None
        return
    steps = model.named_steps["encode"].named_transformers_
    assert steps["targets"].feature_names_in_.tolist() == ["shop"]  # 40 shops: target-encoded
    types = {"categorical": "string", "boolean": "boolean"}
    contract = InputContract(
        tuple(X.columns),
        tuple(types.get(columns.kinds[c], "double") for c in X.columns),
        optional=frozenset(X.columns),
        categories={k: tuple(v) for k, v in mapping.items()},
    )
    import json

    fast = EncodedOnnxPredictor(
        (folder / "model.onnx").read_bytes(),
        json.loads((folder / ENCODING_FILE).read_text()),
        contract,
    )
    rows = [
        [None if pd.isna(v) else v for v in r] for r in loaded.astype(object).to_numpy().tolist()
    ]
    matrix = contract.matrix_from_rows(list(X.columns), rows)
    native = model.predict_proba(loaded) if task == "classification" else model.predict(loaded)
    assert np.array_equal(fast.predict(matrix), native)
