"""Benchmark: batch scoring of a large Parquet table, the usual way against `mlpipe score`.

(a) what people write without mlpipe: `mlflow.pyfunc.load_model(URI)`, then
    `predict(pd.read_parquet(...))`, then the ids and predictions to Parquet;
(b) `mlpipe score --model URI --input ... --output ... --id-column id`.

Same model (the default tuning's best RandomForest, trained first in a fresh folder unless
--tracking-uri names a store with boston-rf@champion), same input, same machine, one after the
other, each in its own process. Each side's time is the whole process, imports and model load
included (what a user waits for); its peak memory is the process's maximum RSS (wait4). The
input is synthetic: Boston rows drawn with replacement and jittered, with an `id` column.

Prints rows/s and peak RSS of both, the ratios, and the largest difference between the two
sides' predictions (matched by id).
Usage: python benchmarks/score.py [--rows 5000000] [--tracking-uri URI]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import BIN, MODEL, arguments, environment, jittered_boston, measure, report

BASELINE = """
import sys
import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_parquet(sys.argv[2])
predictions = model.predict(frame.drop(columns=["id"]))
pd.DataFrame({"id": frame["id"], "prediction": predictions}).to_parquet(sys.argv[3])
"""


def write_table(path: Path, rows: int, chunk: int = 500_000) -> None:
    """``rows`` jittered Boston rows (the table's own column types) plus an int64 id, in chunks."""
    rng = np.random.default_rng(0)
    writer = None
    try:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            frame = jittered_boston(rng, n)
            frame.insert(0, "id", np.arange(start, start + n, dtype=np.int64))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def main() -> None:
    args = arguments(__doc__, 5_000_000)

    folder = tempfile.mkdtemp(prefix="mlpipe-bench-score-")
    env = environment(folder, args.tracking_uri)
    table = Path(folder) / "input.parquet"
    print(f"writing {args.rows:,} synthetic rows to {table.name} ...", flush=True)
    write_table(table, args.rows)

    out_a, out_b = Path(folder) / "a.parquet", Path(folder) / "b.parquet"
    sides = {
        "(a) pyfunc + read_parquet": [
            sys.executable, "-c", BASELINE, MODEL, str(table), str(out_a),
        ],
        "(b) mlpipe score": [
            str(BIN / "mlpipe"), "score", "--model", MODEL, "--input", str(table),
            "--output", str(out_b), "--id-column", "id", "--quiet",
        ],
    }  # fmt: skip
    results = {}
    for name, command in sides.items():
        print(f"{name} ...", flush=True)
        results[name] = measure(command, env, folder)

    a = pd.read_parquet(out_a)
    b = pd.read_parquet(out_b, columns=["id", "prediction"])
    shutil.rmtree(folder, ignore_errors=True)
    report(args.rows, results, a, b)


if __name__ == "__main__":
    main()
