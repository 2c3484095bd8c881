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

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import BIN, DATA, MODEL, environment

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
    """``rows`` jittered Boston rows (float64 features) plus an int64 id, in chunks."""
    boston = pd.read_csv(DATA).drop(columns=["MEDV"]).astype("float64")
    rng = np.random.default_rng(0)
    schema = pa.schema(
        [pa.field("id", pa.int64()), *(pa.field(c, pa.float64()) for c in boston.columns)]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            sample = boston.to_numpy()[rng.integers(0, len(boston), n)]
            sample = sample * rng.uniform(0.95, 1.05, sample.shape)
            columns = [pa.array(np.arange(start, start + n, dtype=np.int64))]
            columns += [pa.array(sample[:, j]) for j in range(sample.shape[1])]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def measure(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} failed with exit status {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--tracking-uri", help="a store with boston-rf@champion (else: train)")
    args = parser.parse_args()

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

    a = pd.read_parquet(out_a).sort_values("id")
    b = pd.read_parquet(out_b, columns=["id", "prediction"]).sort_values("id")
    same_ids = len(a) == len(b) == args.rows and (a["id"].to_numpy() == b["id"].to_numpy()).all()
    diff = float(np.max(np.abs(a["prediction"].to_numpy() - b["prediction"].to_numpy())))

    print(f"\n{args.rows:,} rows, {os.cpu_count()} cores, whole process each (imports included)")
    print(f"{'side':<28}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in results.items():
        print(f"{name:<28}{seconds:>9.1f}{args.rows / seconds:>12,.0f}{rss:>14.0f}")
    (sa, ra), (sb, rb) = results.values()
    print(f"rows/s ratio b/a: {sa / sb:.2f}  (target >= 3)")
    print(f"peak memory ratio b/a: {rb / ra:.3f}  (target <= 0.2)")
    print(f"same ids: {same_ids}; max |prediction difference|: {diff:.3g}")
    shutil.rmtree(folder, ignore_errors=True)
    if not same_ids or diff > 1e-9:
        raise SystemExit("the two sides disagree")


if __name__ == "__main__":
    main()
