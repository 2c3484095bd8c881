import numpy as np
import pandas as pd
import pytest

from mlpipe.data import load_dataset, split_dataset
from mlpipe.errors import DataError
from mlpipe.spec import DataSpec


def test_boston_matches_the_published_table():
    ds = load_dataset(DataSpec(source="boston"), seed=42)
    assert ds.X.shape == (506, 13)
    assert list(ds.X.columns)[:3] == ["CRIM", "ZN", "INDUS"]
    assert ds.y.name == "MEDV"
    assert ds.y.mean() == pytest.approx(22.533, abs=1e-3)
    assert (ds.y.min(), ds.y.max()) == (5.0, 50.0)
    assert ds.X["CRIM"].mean() == pytest.approx(3.614, abs=1e-3)


def test_split_is_sklearns():
    from sklearn.model_selection import train_test_split

    ds = load_dataset(DataSpec(source="boston"), seed=42)
    split = split_dataset(ds, 0.2, 42)
    expected = train_test_split(ds.X, ds.y, test_size=0.2, random_state=42)
    assert split.X_train.index.equals(expected[0].index)
    assert len(split.X_test) == 102


def test_diabetes_and_synthetic():
    diabetes = load_dataset(DataSpec(source="diabetes"), seed=0)
    assert diabetes.X.shape == (442, 10)
    synthetic = load_dataset(DataSpec(source="synthetic", rows=50, features=3), seed=1)
    assert synthetic.X.shape == (50, 3)
    again = load_dataset(DataSpec(source="synthetic", rows=50, features=3), seed=1)
    assert synthetic.fingerprint == again.fingerprint
    assert load_dataset(DataSpec(source="synthetic", rows=50, features=3), seed=2).fingerprint != (
        synthetic.fingerprint
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_load(tmp_path, suffix):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    path = tmp_path / f"t{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    ds = load_dataset(DataSpec(source=str(path), target="y"), seed=0)
    assert list(ds.X.columns) == ["a", "b"]
    assert ds.X.dtypes.eq(np.float64).all()
    assert ds.name == "t"
    assert ds.dtypes == {"a": "float64", "b": "int64"}


def test_the_feature_types_as_loaded_are_kept_for_the_signature(tmp_path):
    frame = pd.DataFrame(
        {
            "i32": np.array([1, 2, 3], dtype="int32"),
            "u8": np.array([1, 2, 3], dtype="uint8"),
            "f32": np.array([0.5, 1.5, 2.5], dtype="float32"),
            "u64": np.array([1, 2, 3], dtype="uint64"),
            "flag": [True, False, True],
            "y": [1, 2, 3],  # an integer target
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    ds = load_dataset(DataSpec(source=str(tmp_path / "t.parquet"), target="y"), seed=0)
    assert ds.X.dtypes.eq(np.float64).all() and ds.y.dtype == np.float64
    # integers as long, floats as double (the widest: pyfunc takes narrower columns too);
    # what MLflow cannot type as a number is declared double, as before
    assert ds.dtypes == {"i32": "int64", "u8": "int64", "f32": "float64", "u64": "float64",
                         "flag": "float64"}  # fmt: skip
    loaded = ds.as_loaded(ds.X.iloc[:2])
    assert loaded.dtypes.astype(str).tolist() == ["int64", "int64", "float64", "float64", "float64"]
    assert loaded["i32"].tolist() == [1, 2] and loaded["f32"].tolist() == [0.5, 1.5]
    boston = load_dataset(DataSpec(source="boston"), seed=0)
    assert [c for c, kind in boston.dtypes.items() if kind == "int64"] == ["CHAS", "RAD", "TAX"]


def test_bad_data_files(tmp_path):
    def load(path, target="y"):
        return load_dataset(DataSpec(source=str(path), target=target), seed=0)

    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        load(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,y\n")
    with pytest.raises(DataError, match="has no rows"):
        load(tmp_path / "header.csv")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read it as parquet"):
        load(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match=r"nor a file ending in \.csv"):
        load(tmp_path / "table.xlsx")
    (tmp_path / "t.csv").write_text("a,colour,y\n1,red,2\n2,blue,3\n")
    # a string column is a feature now (columns.py); two distinct values in two rows: an id
    assert load(tmp_path / "t.csv").columns.identifiers == ("colour",)
    with pytest.raises(DataError, match=r"column 'price' is not in .*columns are: a, colour, y"):
        load(tmp_path / "t.csv", target="price")
