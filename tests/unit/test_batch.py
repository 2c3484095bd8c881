"""Batch scoring (`batch.score`) on real files with a real forest and its ONNX fast path; no
MLflow, no Prefect. The model (conftest.py) is a LoadedModel built in memory, as
`predictor.load_model` builds one from the registry."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpipe.batch import files
from mlpipe.batch import score as scoring
from mlpipe.contract import ColumnValues, InputContract, InputError
from mlpipe.errors import DataError, UserError


def with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(house=[f"h{i}" for i in range(len(frame))])[["house", *frame.columns]]


def test_parquet_scores_every_row_like_the_native_model(tmp_path, frame, model):
    source = tmp_path / "in.parquet"
    with_ids(frame).to_parquet(source)
    summary = scoring.score(model, source, tmp_path / "out.parquet", id_columns=["house"])
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["house", "prediction", "model_name", "model_version", "scored_at"]
    assert out["house"].tolist() == with_ids(frame)["house"].tolist()
    np.testing.assert_array_equal(out["prediction"], model.native.predict(frame.to_numpy()))
    assert set(out["model_name"]) == {"boston-rf"} and set(out["model_version"]) == {"3"}
    assert out["scored_at"].nunique() == 1 and str(out["scored_at"].dt.tz) == "UTC"
    assert (summary.rows, summary.scored, summary.rejected, summary.rejects) == (506, 506, 0, None)
    assert not (tmp_path / "out.rejects.parquet").exists()


def test_without_id_columns_the_row_number_is_the_id(tmp_path, frame, model):
    frame.to_csv(tmp_path / "in.csv", index=False)
    scoring.score(model, tmp_path / "in.csv", tmp_path / "out.parquet", batch_rows=100)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["row"].tolist() == list(range(506))  # across batches of 100


def test_bad_values_go_to_the_rejects_file_with_row_id_and_reason(tmp_path, frame, model):
    text = with_ids(frame).astype(str)
    text.loc[3, "CRIM"] = "abc"
    text.loc[7, "INDUS"] = ""
    text.loc[9, "RM"] = "inf"
    text.loc[11, "TAX"] = "1e999"
    text.to_csv(tmp_path / "in.csv", index=False)
    summary = scoring.score(model, tmp_path / "in.csv", tmp_path / "out.parquet", ["house"])
    rejects = pd.read_parquet(tmp_path / "out.rejects.parquet")
    assert rejects["house"].tolist() == ["h3", "h7", "h9", "h11"]
    reasons = rejects["reason"].tolist()
    assert "field 'CRIM' is a string ('abc'); a number is required" in reasons[0]
    assert "'INDUS'" in reasons[1] and "null" in reasons[1]
    assert "'RM'" in reasons[2] and "Infinity" in reasons[2]
    assert "'TAX'" in reasons[3]
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 502 and not set(out["house"]) & {"h3", "h7", "h9", "h11"}
    assert (summary.scored, summary.rejected) == (502, 4)
    assert summary.rejects == str(tmp_path / "out.rejects.parquet")


def test_nulls_and_nan_in_parquet_are_rejected(tmp_path, frame, model):
    table = pa.Table.from_pandas(with_ids(frame), preserve_index=False)
    for name, row, value in (("NOX", 0, float("nan")), ("LSTAT", 1, None)):
        column = table.column(name).to_pylist()
        column[row] = value  # pa.array keeps a NaN a NaN (from_pandas would make it null)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(column))
    pq.write_table(table, tmp_path / "in.parquet")
    scoring.score(model, tmp_path / "in.parquet", tmp_path / "out.parquet", ["house"])
    rejects = pd.read_parquet(tmp_path / "out.rejects.parquet")
    assert rejects["house"].tolist() == ["h0", "h1"]
    assert "NaN" in rejects["reason"][0] and "null" in rejects["reason"][1]


def test_too_many_rejects_stop_the_run_and_write_nothing(tmp_path, frame, model):
    text = frame.astype(str)
    text.loc[:5, "AGE"] = "old"
    text.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(scoring.RejectLimitError, match="6 rows rejected, more than --max-rej"):
        scoring.score(model, tmp_path / "in.csv", tmp_path / "out.parquet", max_rejects=5)
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]  # no output, no rejects, no temporary


def test_a_missing_column_stops_before_any_output(tmp_path, frame, model):
    frame.drop(columns=["RM", "AGE"]).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(InputError, match=r"lacks the model's feature column\(s\) RM, AGE"):
        scoring.score(model, tmp_path / "in.csv", tmp_path / "out" / "p.parquet")
    assert not (tmp_path / "out").exists()


def test_a_folder_is_read_file_by_file_and_must_have_one_format(tmp_path, frame, model):
    folder = tmp_path / "date=2026-11-22"
    folder.mkdir()
    frame.iloc[:300].to_parquet(folder / "part-0.parquet")
    frame.iloc[300:].to_parquet(folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-2.parquet.crc").write_text("")
    summary = scoring.score(model, folder, tmp_path / "out.parquet")
    assert (summary.rows, summary.files) == (506, 2)
    assert files.count_rows(folder) == 506
    frame.iloc[:3].to_csv(folder / "extra.csv", index=False)
    with pytest.raises(DataError, match="mixes CSV and Parquet"):
        scoring.score(model, folder, tmp_path / "out.parquet")


def test_a_file_missing_a_column_is_named(tmp_path, frame, model):
    folder = tmp_path / "in"
    folder.mkdir()
    frame.to_parquet(folder / "a.parquet")
    frame.drop(columns=["B"]).to_parquet(folder / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: the input lacks .* B"):
        scoring.score(model, folder, tmp_path / "out.parquet")


def test_other_bad_inputs(tmp_path, frame, model):
    with pytest.raises(DataError, match="no such file or folder"):
        scoring.score(model, tmp_path / "nope.csv", tmp_path / "out.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.csv or \.parquet files"):
        scoring.score(model, tmp_path / "empty", tmp_path / "out.parquet")
    frame.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(DataError, match="no id column"):
        scoring.score(model, tmp_path / "in.csv", tmp_path / "out.parquet", ["house"])
    with pytest.raises(UserError, match="that name is an output column"):
        scoring.score(model, tmp_path / "in.csv", tmp_path / "out.parquet", ["prediction"])
    frame.assign(CHAS=frame["CHAS"] > 0).to_parquet(tmp_path / "bool.parquet")
    with pytest.raises(DataError, match="'CHAS' has type bool"):
        scoring.score(model, tmp_path / "bool.parquet", tmp_path / "out.parquet")


def test_rescoring_replaces_the_output_and_its_rejects(tmp_path, frame, model):
    text = frame.astype(str)
    text.loc[0, "ZN"] = "x"
    text.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.parquet"
    scoring.score(model, tmp_path / "in.csv", out)
    first = pd.read_parquet(out).drop(columns=["scored_at"])
    assert scoring.rejects_path_for(out).exists()
    scoring.score(model, tmp_path / "in.csv", out)
    pd.testing.assert_frame_equal(pd.read_parquet(out).drop(columns=["scored_at"]), first)
    frame.to_csv(tmp_path / "in.csv", index=False)  # fixed upstream: the old rejects go
    scoring.score(model, tmp_path / "in.csv", out)
    assert len(pd.read_parquet(out)) == 506 and not scoring.rejects_path_for(out).exists()


def test_temporaries_of_dead_runs_are_cleared_and_live_ones_kept(tmp_path):
    out = tmp_path / "out.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".out.parquet{files.TMP_MARK}{dead.stdout.strip()}"
    live = tmp_path / f".out.parquet{files.TMP_MARK}{os.getppid()}"
    stale.write_text("partial")
    live.write_text("another scorer is writing")
    files.clear_stale_temporaries(out)
    assert not stale.exists() and live.exists()


def test_check_columns_explains_only_bad_rows():
    contract = InputContract(("a", "n"), ("double", "long"))
    values = ColumnValues(
        values=[np.array([1.0, np.nan, 2.0, 3.0]), np.array([1.0, 2.0, 2.5, np.inf])],
        nulls=[np.array([False, True, False, False]), None],
        texts=[None, None],
    )
    matrix, valid, reasons = contract.check_columns(values)
    assert valid.tolist() == [True, False, False, False]
    assert reasons == [
        "field 'a' is empty (null); a number is required",
        "field 'n' is 2.5; an integer is required",
        "field 'n' is inf; NaN and Infinity are not accepted",
    ]
    assert matrix[0].tolist() == [1.0, 1.0]


def test_a_classifier_writes_its_label_and_one_probability_column_per_class(
    tmp_path, frame, classifier
):
    source = tmp_path / "in.parquet"
    with_ids(frame).to_parquet(source)
    scoring.score(classifier, source, tmp_path / "out.parquet", id_columns=["house"])
    out = pd.read_parquet(tmp_path / "out.parquet")
    classes = ["cheap", "dear", "mid"]  # scikit-learn's sorted classes_
    probabilities = [f"probability_{c}" for c in classes]
    assert list(out.columns) == ["house", "prediction", *probabilities, "model_name",
                                 "model_version", "scored_at"]  # fmt: skip
    forest = classifier.native.model
    assert out["prediction"].tolist() == list(forest.predict(frame))
    np.testing.assert_array_equal(out[probabilities].to_numpy(), forest.predict_proba(frame))
    with pytest.raises(UserError, match="probability_mid: that name is an output column"):
        scoring.score(classifier, source, tmp_path / "o.parquet", id_columns=["probability_mid"])
