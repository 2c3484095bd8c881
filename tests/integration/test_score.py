"""`mlpipe score` as a user runs it: the installed command, a model `mlpipe train` registered in a
real MLflow SQLite store, real files; and a scorer killed halfway."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BIN, run_mlpipe

pytestmark = pytest.mark.integration

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
MODEL = "models:/boston-rf@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    """A store where `mlpipe train` registered boston-rf version 1 (champion)."""
    root = tmp_path_factory.mktemp("score")
    return {"root": root, "env": {"MLFLOW_TRACKING_URI": trained["uri"]}}


@pytest.fixture(scope="module")
def pyfunc(store, restore_mlflow_uris):
    import mlflow.pyfunc

    # both: an in-process `mlpipe train` of another module may have set the registry's
    mlflow.set_tracking_uri(store["env"]["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(store["env"]["MLFLOW_TRACKING_URI"])
    return mlflow.pyfunc.load_model(MODEL)


def score(store, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_mlpipe(["score", "--model", MODEL, *args], cwd, **store["env"])


def test_scores_a_csv_like_mlflow_and_rejects_bad_rows(store, pyfunc, tmp_path):
    frame = pd.read_csv(BOSTON).drop(columns=["MEDV"])
    text = frame.astype(str).assign(house=[f"h{i}" for i in range(len(frame))])
    text.loc[5, "RM"] = "six"
    text.loc[8, "NOX"] = "NaN"
    text.loc[11, "AGE"] = ""  # the one missing value: CSV's empty field
    text.loc[13, "DIS"] = "NA"
    text.to_csv(tmp_path / "houses.csv", index=False)
    result = score(store, tmp_path, "-i", "houses.csv", "-o", "out/scored.parquet",
                   "--id-column", "house")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = result.stdout.splitlines()[0]
    assert summary.startswith("scored 502 of 506 rows with boston-rf version 1 (onnx) in ")
    assert "s (reading and predicting " in summary and " rows/s)" in summary
    assert "4 rows rejected -> out/scored.rejects.parquet" in result.stdout
    assert "  +1 more in out/scored.rejects.parquet" in result.stdout  # 3 reasons shown
    out = pd.read_parquet(tmp_path / "out/scored.parquet")
    kept = frame.drop(index=[5, 8, 11, 13])
    assert out["house"].tolist() == [f"h{i}" for i in kept.index]
    np.testing.assert_array_equal(out["prediction"], pyfunc.predict(kept))  # bit for bit
    assert set(out["model_version"]) == {"1"}
    rejects = pd.read_parquet(tmp_path / "out/scored.rejects.parquet")
    assert rejects["house"].tolist() == ["h5", "h8", "h11", "h13"]
    reasons = rejects["reason"].tolist()
    assert "field 'RM' is a string ('six')" in reasons[0]
    assert "field 'NOX' is the string 'NaN'; NaN and Infinity are not accepted" in reasons[1]
    assert "field 'AGE' is empty (null)" in reasons[2]
    assert "field 'DIS' is a string ('NA')" in reasons[3]


def test_a_missing_column_fails_before_any_output(store, tmp_path):
    pd.read_csv(BOSTON).drop(columns=["LSTAT", "MEDV"]).to_csv(tmp_path / "in.csv", index=False)
    result = score(store, tmp_path, "-i", "in.csv", "-o", "out/p.parquet")
    assert result.returncode == 2
    assert "lacks the model's feature column(s) LSTAT" in result.stderr
    assert not (tmp_path / "out").exists()


def test_too_many_rejects_stop_with_the_first_reasons(store, tmp_path):
    frame = pd.read_csv(BOSTON).drop(columns=["MEDV"]).astype(str)
    frame.loc[:9, "TAX"] = ""
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = score(store, tmp_path, "-i", "in.csv", "-o", "p.parquet", "--max-rejects", "3")
    assert result.returncode == 2
    assert "rows rejected, more than --max-rejects 3; nothing was written" in result.stderr
    assert "field 'TAX' is empty" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


def test_a_scorer_killed_halfway_leaves_no_output_and_a_rerun_gives_the_same_rows(store, tmp_path):
    boston = pd.read_csv(BOSTON).drop(columns=["MEDV"])
    rng = np.random.default_rng(0)
    rows = 1_000_000
    sample = boston.iloc[rng.integers(0, len(boston), rows)].reset_index(drop=True)
    floats = [c for c in sample if sample[c].dtype.kind == "f"]  # integer columns stay integers
    sample[floats] *= rng.uniform(0.95, 1.05, (rows, len(floats)))
    sample.insert(0, "id", np.arange(rows))
    pq.write_table(pa.Table.from_pandas(sample, preserve_index=False), tmp_path / "big.parquet")
    args = [str(BIN / "mlpipe"), "score", "--model", MODEL, "-i", "big.parquet",
            "-o", "scored/p.parquet", "--id-column", "id", "--quiet"]  # fmt: skip
    env = {**os.environ, **store["env"]}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    partial = []
    while not partial and time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in (tmp_path / "scored").glob(".p.parquet.tmp-*") if p.stat().st_size]
        time.sleep(0.01)
    assert partial, "the scorer finished before it could be killed; give it more rows"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "scored/p.parquet").exists()  # nothing half-written in sight

    result = score(store, tmp_path, "-i", "big.parquet", "-o", "scored/p.parquet",
                   "--id-column", "id")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "scored")) == ["p.parquet"]  # the dead run's temp: gone
    first = pd.read_parquet(tmp_path / "scored/p.parquet", columns=["id", "prediction"])
    assert first["id"].tolist() == list(range(rows))
    again = score(store, tmp_path, "-i", "big.parquet", "-o", "scored/p.parquet",
                  "--id-column", "id")  # fmt: skip
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "scored/p.parquet", columns=["id", "prediction"]), first
    )
