"""`mlpipe score` between databases, for real: a PostgreSQL server (Debian's package, password
authentication) and SQLite files. Chunked reads through a server-side cursor; one transaction
per partition, so a run killed in the middle leaves nothing and a rerun gives the same rows;
credentials never on the command line nor in the output."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from conftest import BIN, run_mlpipe

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
DAYS = ["2026-11-21", "2026-11-22"]
QUERY = "SELECT * FROM houses WHERE day = :day"


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("sql")
    return {"root": root, "env": {"MLFLOW_TRACKING_URI": trained["uri"]}}


def houses(repeat: int = 1) -> pd.DataFrame:
    """The Boston rows once per day (and ``repeat`` times each), with an id and a day."""
    base = pd.read_csv(BOSTON).drop(columns=["MEDV"])
    frames = [base.assign(day=day) for day in DAYS for _ in range(repeat)]
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(house_id=range(len(frame)))


@pytest.fixture(scope="module")
def pg(postgres):
    """The houses table in PostgreSQL; ``connect()`` opens a plain psycopg connection."""
    dsn = postgres["url"].replace("+psycopg", "")

    def connect() -> psycopg.Connection:
        return psycopg.connect(dsn, password=postgres["password"], autocommit=True)

    frame = houses()
    with connect() as conn:
        conn.execute(
            "CREATE TABLE houses (" + ", ".join(
                f'"{c}" {"text" if c == "day" else "bigint" if c == "house_id" else "float8"}'
                for c in frame.columns
            ) + ")"
        )  # fmt: skip
        with conn.cursor().copy("COPY houses FROM STDIN (FORMAT csv)") as copy:
            copy.write(frame.to_csv(index=False, header=False))
    return postgres | {"connect": connect, "frame": frame}


def score(store, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_mlpipe(["score", "-m", "models:/boston-rf@champion", "--quiet", *args],
                      store["root"], **store["env"], **(env or {}))  # fmt: skip


def reference(store, frame: pd.DataFrame) -> pd.Series:
    """The same rows scored from a Parquet file, in this process (`mlpipe score`'s function
    on the same model): what a database run must equal."""
    from mlpipe.batch.score import score as score_rows
    from mlpipe.predictor import open_model

    source, target = store["root"] / "reference.parquet", store["root"] / "reference-out.parquet"
    frame.to_parquet(source)
    model = open_model("models:/boston-rf@champion", store["env"]["MLFLOW_TRACKING_URI"])
    assert score_rows(model, source, target, id_columns=["house_id"]).rejected == 0
    return pd.read_parquet(target).set_index("house_id")["prediction"]


def test_postgres_to_postgres_by_partition_and_a_rerun_replaces(store, pg):
    env = {"PGPASSWORD": pg["password"]}
    for day in DAYS:
        args = ["-i", pg["url"], "--query", QUERY, "--partition", f"day={day}", "-o", pg["url"],
                "--output-table", "predictions", "--id-column", "house_id"]  # fmt: skip
        first = score(store, *args, env=env)
        assert first.returncode == 0, first.stderr
        assert "scored 506 of 506 rows" in first.stdout
        assert f"table predictions where day = '{day}'" in first.stdout
        assert "drift: none past the thresholds" in first.stdout
        again = score(store, *args, env=env)
        assert again.returncode == 0, again.stderr
        for text in (first.stdout + first.stderr, again.stdout + again.stderr):
            assert pg["password"] not in text
    with pg["connect"]() as conn:
        columns = ["day", "house_id", "prediction", "model_version"]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM predictions").fetchall()
    out = pd.DataFrame(rows, columns=columns)
    assert out.groupby("day").size().to_dict() == {day: 506 for day in DAYS}  # no duplicates
    assert out["house_id"].is_unique and set(out["model_version"]) == {"1"}
    expected = reference(store, pg["frame"])
    assert (out.set_index("house_id")["prediction"] - expected[out["house_id"]]).abs().max() < 1e-9


def test_credentials_are_refused_on_the_command_line_and_read_from_the_environment(store, pg):
    with_password = pg["url"].replace("mlpipe@", f"mlpipe:{pg['password']}@")
    refused = score(store, "-i", with_password, "--table", "houses", "-o", "x.parquet")
    assert refused.returncode == 2
    assert "the URL holds a password" in refused.stderr and "env:VARIABLE" in refused.stderr
    assert pg["password"] not in refused.stderr
    out = store["root"] / "from-env.parquet"
    ok = score(store, "-i", "env:SHOP_DB", "--table", "houses", "-o", str(out),
               env={"SHOP_DB": with_password})  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert len(pd.read_parquet(out)) == 2 * 506
    assert pg["password"] not in ok.stdout + ok.stderr and "***" in ok.stdout
    wrong = score(store, "-i", pg["url"], "--table", "houses", "-o", str(out),
                  env={"PGPASSWORD": "wrong"})  # fmt: skip
    assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr


def test_a_read_streams_in_batches_while_the_query_runs(pg):
    """PostgreSQL streams the query's rows through COPY TO STDOUT: after the first batch the
    COPY is still running on the server, and the rows come in many batches."""
    from sqlalchemy.engine import make_url

    from mlpipe.batch.sql import SqlSource

    # ~30 MB per day: more than the loopback socket buffers hold, so a server that has sent
    # everything (not streaming) would show as finished
    with pg["connect"]() as conn:
        conn.execute("CREATE TABLE many AS SELECT h.* FROM houses h, generate_series(1, 600)")
    url = make_url(pg["url"]).set(password=pg["password"])
    batches = SqlSource(url, query="SELECT * FROM many WHERE day = :day",
                        params={"day": DAYS[1]}).batches(1000)  # fmt: skip
    try:
        first = next(batches)
        with pg["connect"]() as conn:
            running = conn.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND usename = 'mlpipe' AND backend_type = 'client backend' "
                "AND query LIKE 'COPY (%'"
            ).fetchall()
        assert len(running) == 1, running
        assert running[0][1].startswith("COPY (SELECT * FROM many WHERE day = "), running
        assert running[0][0] == "active", running  # held back by the client, not finished
        sizes = [first.num_rows, *(b.num_rows for b in batches)]
    finally:
        batches.close()  # a failed assertion must not leave the COPY holding its locks
    assert sum(sizes) == 600 * 506 and len(sizes) > 20 and max(sizes) < 5000
    assert first.schema.field("house_id").type == "int64"  # the query's column types
    assert first.schema.field("RM").type == "double" and first.schema.field("day").type == "string"


def _kill_when(proc: subprocess.Popen, writing) -> None:
    deadline = time.monotonic() + 120
    while not writing():
        assert proc.poll() is None, "the run ended before it was caught writing"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_a_run_killed_while_writing_leaves_no_partial_partition(store, pg, database, tmp_path):
    """A big partition, killed in the middle of its writes; the other partition's rows stay; a
    rerun writes every row exactly once."""
    big = houses(repeat=200)  # 202,400 rows, half of them on each day
    env = {"PGPASSWORD": pg["password"]}
    if database == "postgresql":
        with pg["connect"]() as conn:
            conn.execute("DROP TABLE IF EXISTS big_predictions")
            conn.execute("CREATE TABLE big AS SELECT * FROM houses LIMIT 0")
            with conn.cursor().copy("COPY big FROM STDIN (FORMAT csv)") as copy:
                copy.write(big[list(pg["frame"].columns)].to_csv(index=False, header=False))
        source = target = pg["url"]

        def writing() -> bool:
            with pg["connect"]() as conn:
                return bool(conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query ILIKE 'COPY%big_predictions%'"
                ).fetchall())  # fmt: skip

        def rows(day: str) -> int:
            with pg["connect"]() as conn:
                return conn.execute("SELECT count(*) FROM big_predictions WHERE day = %s",
                                    (day,)).fetchone()[0]  # fmt: skip
    else:
        shop, db = tmp_path / "shop.db", tmp_path / "scores.db"
        with sqlite3.connect(shop) as conn:
            big.to_sql("big", conn, index=False)
        source, target = f"sqlite:///{shop}", f"sqlite:///{db}"

        def writing() -> bool:  # SQLite keeps a rollback journal while a write is open
            return Path(f"{db}-journal").exists()

        def rows(day: str) -> int:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT count(*) FROM big_predictions WHERE day = ?",
                                    (day,)).fetchone()[0]  # fmt: skip

    def args(day: str) -> list[str]:
        return ["-i", source, "--query", "SELECT * FROM big WHERE day = :day", "--partition",
                f"day={day}", "-o", target, "--output-table", "big_predictions",
                "--id-column", "house_id"]  # fmt: skip

    done = score(store, *args(DAYS[0]), env=env)
    assert done.returncode == 0, done.stderr
    assert rows(DAYS[0]) == len(big) // 2
    proc = subprocess.Popen(
        [str(BIN / "mlpipe"), "score", "-m", "models:/boston-rf@champion", "--quiet",
         *args(DAYS[1])],
        cwd=store["root"], env={**os.environ, **store["env"], **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    _kill_when(proc, writing)
    assert rows(DAYS[1]) == 0  # nothing of the killed run is visible
    assert rows(DAYS[0]) == len(big) // 2  # and the other partition is untouched
    rerun = score(store, *args(DAYS[1]), env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert rows(DAYS[1]) == len(big) // 2
