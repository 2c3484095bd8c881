"""Benchmark: `mlpipe score` on a table with categories against the same on a table of numbers.

(a) `mlpipe score` of the default tuning's Boston forest (13 numeric features) on jittered
    Boston rows: the numeric table, on the ONNX fast path;
(b) `mlpipe score` of a forest tuned on ``common.categorical_table`` (8 numbers, 4 string
    columns, one with 300 categories, empty cells) on rows drawn from that table: each string
    coded by the model's own mapping, one-hot by table, then the forest's graph.

Both as whole processes (imports and model load included), the same number of rows, one after
the other. Prints rows/s of both and the ratio b/a (goal >= 0.7), and the largest difference of
(b)'s predictions from MLflow's pyfunc on the same rows (a sample of them).
Usage: python benchmarks/score_categorical.py [--rows 2000000] [--tracking-uri URI]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from common import BIN, MODEL, arguments, categorical_table, environment, measure
from score import write_table

CATEGORICAL_MODEL = "models:/houses-2000-rf@champion"


def main() -> None:
    args = arguments(__doc__, 2_000_000)
    folder = tempfile.mkdtemp(prefix="mlpipe-bench-score-categorical-")
    env = environment(folder, args.tracking_uri)
    source = categorical_table(2000, Path(folder))
    print("training the forest of the table with categories (mlpipe train) ...", flush=True)
    train = [str(BIN / "mlpipe"), "train", "--quiet", "--data", str(source), "--target", "price"]
    subprocess.run(train, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    numeric, categorical = Path(folder) / "numeric.parquet", Path(folder) / "categorical.parquet"
    print(f"writing {args.rows:,} rows of each table ...", flush=True)
    write_table(numeric, args.rows)
    rows = pd.read_csv(source).drop(columns=["price"])
    drawn = rows.iloc[np.random.default_rng(1).integers(0, len(rows), args.rows)]
    drawn = drawn.reset_index(drop=True)
    drawn.insert(0, "id", np.arange(args.rows, dtype=np.int64))
    drawn.to_parquet(categorical)

    results = {}
    sides = [("(a) numeric table", MODEL, numeric),
             ("(b) table with categories", CATEGORICAL_MODEL, categorical)]  # fmt: skip
    for name, model, table in sides:
        print(f"{name} ...", flush=True)
        out = table.with_suffix(".scored.parquet")
        command = [str(BIN / "mlpipe"), "score", "--model", model, "--input", str(table),
                   "--output", str(out), "--id-column", "id", "--quiet"]  # fmt: skip
        results[name] = measure(command, env, folder)

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    sample = drawn.iloc[:20_000]
    expected = mlflow.pyfunc.load_model(CATEGORICAL_MODEL).predict(sample.drop(columns=["id"]))
    scored = pd.read_parquet(categorical.with_suffix(".scored.parquet")).sort_values("id")
    diff = float(np.max(np.abs(scored["prediction"].to_numpy()[:20_000] - expected)))
    shutil.rmtree(folder, ignore_errors=True)

    print(f"\n{args.rows:,} rows each, {os.cpu_count()} cores, whole process each")
    print(f"{'side':<30}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in results.items():
        print(f"{name:<30}{seconds:>9.1f}{args.rows / seconds:>12,.0f}{rss:>14.0f}")
    (sa, _), (sb, _) = results.values()
    print(f"rows/s ratio b/a: {sa / sb:.2f}  (target >= 0.7)")
    print(f"max |(b) - pyfunc| on 20,000 rows: {diff:.3g}")
    if diff > 1e-9:
        raise SystemExit("mlpipe score and MLflow's pyfunc disagree")


if __name__ == "__main__":
    main()
