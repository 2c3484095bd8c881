"""Database sources and sinks on SQLite files: URLs and credentials, batches, one transaction
per partition, and `mlpipe score` with a database at either end (PostgreSQL, for real, is in
tests/integration/test_sql.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlpipe.batch import score as scoring
from mlpipe.batch.score import SqlTarget
from mlpipe.batch.sql import SqlSource, is_database, parse_pairs, resolve_url, shown
from mlpipe.batch.sql_sink import SqlSink
from mlpipe.errors import DataError, UserError

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"


@pytest.fixture
def shop(tmp_path):
    """shop.db: the Boston rows on two days, with ids."""
    frame = pd.read_csv(BOSTON).drop(columns=["MEDV"])
    frame = pd.concat([frame.assign(day="2026-11-21"), frame.assign(day="2026-11-22")])
    frame["house_id"] = range(len(frame))
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        frame.to_sql("houses", conn, index=False)
    return {"path": path, "url": resolve_url(f"sqlite:///{path}", "--input", {}), "frame": frame}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app@db/shop", True),
        ("postgresql+psycopg://app@db:5432/shop", True),
        ("sqlite:///shop.db", True),
        ("sql+sqlite:///shop.db", True),
        ("env:SHOP_DB", True),
        ("secret:shop-db", True),
        ("data/incoming/date=2026-11-22", False),
        ("houses.parquet", False),
        ("s3://bucket/houses.parquet", False),
        ("file:///tmp/x.csv", False),
    ],
)
def test_database_urls_are_told_from_paths(text, expected):
    assert is_database(text) is expected


def test_credentials_come_from_the_environment_or_a_secret_never_the_command_line():
    with pytest.raises(UserError, match="holds a password") as refused:
        resolve_url("postgresql://app:hunter2@db/shop", "--input", {})
    assert "hunter2" not in str(refused.value)
    from_env = resolve_url("env:SHOP_DB", "--input", {"SHOP_DB": "postgresql://app:hunter2@db/s"})
    assert from_env.password == "hunter2" and shown(from_env) == "postgresql://app:***@db/s"
    from_secret = resolve_url("secret:shop", "-o", {}, lambda name: f"sqlite:///{name}.db")
    assert str(from_secret) == "sqlite:///shop.db"
    with pytest.raises(UserError, match="SHOP_DB is not set"):
        resolve_url("env:SHOP_DB", "--input", {})
    with pytest.raises(UserError, match="not a database URL"):
        resolve_url("env:X", "--input", {"X": "not a url"})


def test_key_value_options():
    assert parse_pairs(["day=2026-11-22", "shop=a=b"], "--param") == {
        "day": "2026-11-22",
        "shop": "a=b",
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_pairs(["2026-11-22"], "--partition")
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_pairs(["da y=1"], "--partition")


def test_a_query_with_parameters_is_read_in_batches(shop):
    source = SqlSource(shop["url"], query="SELECT * FROM houses WHERE day = :day",
                       params={"day": "2026-11-22", "unused": "x"})  # fmt: skip
    batches = list(source.batches(100))
    assert [b.num_rows for b in batches] == [100] * 5 + [6]
    assert set(pa.Table.from_batches(batches).column("day").to_pylist()) == {"2026-11-22"}
    table = SqlSource(shop["url"], table="houses")
    assert sum(b.num_rows for b in table.batches(1000)) == 1012
    with pytest.raises(UserError, match="one"):
        SqlSource(shop["url"], table="houses", query="SELECT 1")
    with pytest.raises(UserError, match="table name"):
        list(SqlSource(shop["url"], table="houses; DROP TABLE houses").batches(10))
    with pytest.raises(DataError, match="no such table"):
        list(SqlSource(shop["url"], table="nothing").batches(10))


def _sink(url, partition, rows=3):
    predictions = pa.schema([pa.field("id", pa.int64()), pa.field("prediction", pa.float64())])
    rejects = pa.schema([pa.field("id", pa.int64()), pa.field("reason", pa.string())])
    sink = SqlSink(url, "scores", partition, predictions, rejects)
    sink.write_predictions(
        pa.table({"id": np.arange(rows), "prediction": np.ones(rows)}, schema=predictions)
    )
    return sink


def _count(path, where=""):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM scores {where}").fetchone()[0]


def test_a_partition_appears_at_commit_and_a_rerun_replaces_it(tmp_path):
    path = tmp_path / "out.db"
    url = resolve_url(f"sqlite:///{path}", "-o", {})
    _sink(url, ("day", "a")).commit()
    _sink(url, ("day", "b"), rows=5).commit()
    assert _count(path) == 8
    _sink(url, ("day", "a"), rows=4).commit()  # replaces day a only
    assert _count(path, "WHERE day = 'a'") == 4 and _count(path, "WHERE day = 'b'") == 5
    unfinished = _sink(url, ("day", "b"), rows=7)
    unfinished.discard()  # a failed run: the table as it was
    assert _count(path, "WHERE day = 'b'") == 5
    _sink(url, None, rows=2).commit()  # no partition: the whole table is replaced
    assert _count(path) == 2


def test_a_partition_column_must_not_clash(tmp_path):
    url = resolve_url(f"sqlite:///{tmp_path / 'out.db'}", "-o", {})
    with pytest.raises(UserError, match="output column"):
        _sink(url, ("prediction", "x"))


def test_one_sqlite_file_as_input_and_output_says_what_to_do(shop, model):
    with pytest.raises(DataError, match="WAL"):
        scoring.score(model, SqlSource(shop["url"], table="houses"),
                    SqlTarget(shop["url"], "scores"), batch_rows=100)  # fmt: skip


def test_score_from_a_table_into_a_table_equals_scoring_the_file(shop, model, tmp_path):
    out = tmp_path / "out.db"
    target = SqlTarget(resolve_url(f"sqlite:///{out}", "-o", {}), "scores", ("day", "2026-11-22"))
    source = SqlSource(shop["url"], query="SELECT * FROM houses WHERE day = :day",
                       params={"day": "2026-11-22"})  # fmt: skip
    summary = scoring.score(model, source, target, id_columns=["house_id"], batch_rows=128)
    assert summary.rows == summary.scored == 506 and summary.files == 0
    assert summary.output.endswith("table scores where day = '2026-11-22'")
    with sqlite3.connect(out) as conn:
        got = pd.read_sql("SELECT * FROM scores ORDER BY house_id", conn)
    assert list(got.columns) == ["day", "house_id", "prediction", "model_name", "model_version",
                                 "scored_at"]  # fmt: skip
    frame = shop["frame"][shop["frame"]["day"] == "2026-11-22"]
    expected = model.predict(frame[list(model.contract.names)].to_numpy(np.float64))
    assert np.allclose(got["prediction"], expected) and set(got["day"]) == {"2026-11-22"}


def test_bad_rows_go_to_the_rejects_table_in_the_same_transaction(shop, model, tmp_path):
    with sqlite3.connect(shop["path"]) as conn:
        conn.execute("UPDATE houses SET RM = 'lots' WHERE house_id IN (3, 7)")
    out = tmp_path / "out.db"
    target = SqlTarget(resolve_url(f"sqlite:///{out}", "-o", {}), "scores")
    summary = scoring.score(model, SqlSource(shop["url"], table="houses"), target,
                          id_columns=["house_id"])  # fmt: skip
    assert summary.rejected == 2 and summary.scored == 1010
    with sqlite3.connect(out) as conn:
        reasons = conn.execute("SELECT house_id, reason FROM scores_rejects").fetchall()
    assert [r[0] for r in reasons] == [3, 7] and "RM" in reasons[0][1]
