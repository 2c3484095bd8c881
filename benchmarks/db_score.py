"""Benchmark: scoring a PostgreSQL table into PostgreSQL, the usual way against `mlpipe score`.

(a) what people write without mlpipe: `pandas.read_sql` of the table, `predict` with the
    model loaded through `mlflow.pyfunc.load_model(URI)`, then `DataFrame.to_sql` of the ids and
    predictions (pandas' defaults: one multi-row executemany through SQLAlchemy and psycopg);
(b) `mlpipe score --input postgresql://... --table houses --output postgresql://...
    --output-table predictions --id-column id`: a server-side cursor in batches, the ONNX fast
    path on a few threads, COPY into the table, one transaction.

Same model (the default tuning's best RandomForest, trained first in a fresh folder unless
--tracking-uri names a store with boston-rf@champion), same table, same machine, one after the
other, each in its own process; a throwaway PostgreSQL server (`mlpipe.localdb`, Debian's
package) on loopback. Each side's time is the whole process, imports and model load included;
its peak memory is the process's maximum RSS (wait4). The rows are synthetic: Boston rows drawn
with replacement and jittered, with an `id` column.

Prints rows/s and peak RSS of both, the ratios, and the largest difference between the two
sides' predictions (matched by id). Each side also runs on a 1,000-row table, which shows what
its peak memory costs whatever the rows (imports, the model): the rest is what the rows cost.
Usage: python benchmarks/db_score.py [--rows 1000000] [--tracking-uri URI]
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile

import numpy as np
import pandas as pd
import psycopg
from common import BIN, MODEL, arguments, environment, jittered_boston, measure, report

from mlpipe.localdb import local_postgres

BASELINE = """
import sys
import mlflow.pyfunc
import pandas as pd
import sqlalchemy as sa

engine = sa.create_engine(sys.argv[2])
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_sql(f"SELECT * FROM {sys.argv[3]}", engine)
predictions = model.predict(frame.drop(columns=["id"]))
pd.DataFrame({"id": frame["id"], "prediction": predictions}).to_sql(
    sys.argv[4], engine, if_exists="replace", index=False
)
"""


def load_table(dsn: str, password: str, rows: int, chunk: int = 200_000) -> None:
    """``rows`` jittered Boston rows (float8 and bigint features, as the table has them) plus a
    bigint id, through COPY."""
    rng = np.random.default_rng(0)
    boston = jittered_boston(rng, 1)
    columns = ", ".join(
        f'"{c}" {"bigint" if boston[c].dtype.kind == "i" else "float8"}' for c in boston.columns
    )
    with psycopg.connect(dsn, password=password, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE houses (id bigint, {columns})")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            frame = jittered_boston(rng, n)
            frame.insert(0, "id", np.arange(start, start + n))
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            with conn.cursor().copy("COPY houses FROM STDIN (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
        conn.execute("CREATE TABLE houses_1000 AS SELECT * FROM houses ORDER BY id LIMIT 1000")
        conn.execute("ANALYZE houses")


def fetch(dsn: str, password: str, table: str) -> pd.DataFrame:
    with psycopg.connect(dsn, password=password) as conn:
        rows = conn.execute(f"SELECT id, prediction FROM {table} ORDER BY id").fetchall()
    return pd.DataFrame(rows, columns=["id", "prediction"])


def main() -> None:
    args = arguments(__doc__, 1_000_000)

    folder = tempfile.mkdtemp(prefix="mlpipe-bench-db-")
    env = environment(folder, args.tracking_uri)
    with local_postgres() as pg:
        env["PGPASSWORD"] = pg.password  # libpq's own variable: no password on a command line
        print(f"loading {args.rows:,} synthetic rows into PostgreSQL ...", flush=True)
        load_table(pg.dsn, pg.password, args.rows)

        def sides(table: str, tag: str) -> dict[str, list[str]]:
            return {
                "(a) read_sql+predict+to_sql": [
                    sys.executable, "-c", BASELINE, MODEL, pg.url, table,
                    f"pandas_predictions{tag}",
                ],
                "(b) mlpipe score": [
                    str(BIN / "mlpipe"), "score", "--model", MODEL, "--input", pg.url,
                    "--table", table, "--output", pg.url, "--output-table", f"predictions{tag}",
                    "--id-column", "id", "--quiet",
                ],
            }  # fmt: skip

        results, fixed = {}, {}
        for name, command in sides("houses", "").items():
            print(f"{name} ...", flush=True)
            results[name] = measure(command, env, folder)
        for name, command in sides("houses_1000", "_1000").items():
            fixed[name] = measure(command, env, folder)[1]
        a = fetch(pg.dsn, pg.password, "pandas_predictions")
        b = fetch(pg.dsn, pg.password, "predictions")

    shutil.rmtree(folder, ignore_errors=True)
    report(args.rows, results, a, b, fixed)


if __name__ == "__main__":
    main()
