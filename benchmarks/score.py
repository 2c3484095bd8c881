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

With --s3, the same table is also scored from and to S3 on a local endpoint (moto's S3 server, a
process of its own on a loopback port), one after the other with the local runs:
(c) the naive way: `pd.read_parquet("s3://...")` + pyfunc + `to_parquet("s3://...")`;
(d) `mlpipe score --input s3://... --output s3://...`;
and (d) is compared with (b) (rows/s within 25%, peak RSS within 1.2x) and with (c) (at least
1.5x the rows/s, at most half the peak memory).
Usage: python benchmarks/score.py [--rows 5000000] [--tracking-uri URI] [--s3]
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import BIN, MODEL, agree, arguments, environment, jittered_boston, measure, report

from mlpipe.processes import free_port, stop_group, wait_until

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


@contextlib.contextmanager
def s3_endpoint(folder: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port while the block runs: the environment that
    points S3 clients (boto3, pyarrow, pandas) at it, with moto's dummy credentials."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(Path(folder) / "moto.log", "wb") as log:
        command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def answers() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    try:
        if not wait_until(answers, lambda: server.poll() is None, timeout=60):
            raise SystemExit(f"moto_server did not start (see {folder}/moto.log)")
        yield {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "local",
               "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    finally:
        stop_group(server.pid, grace=5)
        server.wait()


def s3_sides(
    table: Path, env: dict[str, str], folder: str
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(c) and (d): the table scored from and to S3; their results and predictions."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket="bench")
    s3.upload_file(str(table), "bench", "input.parquet")
    source, out_c, out_d = (
        "s3://bench/input.parquet",
        "s3://bench/c.parquet",
        "s3://bench/d.parquet",
    )
    sides = {
        "(c) pyfunc + read_parquet(s3)": [sys.executable, "-c", BASELINE, MODEL, source, out_c],
        "(d) mlpipe score s3 -> s3": [
            str(BIN / "mlpipe"), "score", "--model", MODEL, "--input", source,
            "--output", out_d, "--id-column", "id", "--quiet",
        ],
    }  # fmt: skip
    results = {}
    for name, command in sides.items():
        print(f"{name} ...", flush=True)
        results[name] = measure(command, env, folder)
    frames = []
    for key in ("c.parquet", "d.parquet"):
        s3.download_file("bench", key, str(Path(folder) / key))
        frames.append(pd.read_parquet(Path(folder) / key, columns=["id", "prediction"]))
    return results, frames[0], frames[1]


def s3_report(rows: int, local: dict, s3: dict) -> None:
    """(d) against (b), and (d) against (c), with the issue's targets."""
    sb, rb = list(local.values())[1]
    (sc, rc), (sd, rd) = s3.values()
    print(f"{rows:,} rows from and to S3 (moto's server on loopback)")
    print(f"{'side':<30}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>14}")
    for name, (seconds, rss) in s3.items():
        print(f"{name:<30}{seconds:>9.1f}{rows / seconds:>12,.0f}{rss:>14.0f}")
    print(f"S3 vs local mlpipe score, rows/s d/b: {sb / sd:.2f}  (target >= 0.75)")
    print(f"S3 vs local mlpipe score, peak RSS d/b: {rd / rb:.2f}  (target <= 1.2)")
    print(f"S3 vs naive S3, rows/s d/c: {sc / sd:.2f}  (target >= 1.5)")
    print(f"S3 vs naive S3, peak RSS d/c: {rd / rc:.2f}  (target <= 0.5)")


def main() -> None:
    args = arguments(__doc__, 5_000_000, s3=True)

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
    if args.s3:
        with s3_endpoint(folder) as endpoint:
            s3_results, c, d = s3_sides(table, {**env, **endpoint}, folder)
    shutil.rmtree(folder, ignore_errors=True)
    report(args.rows, results, a, b)
    if args.s3:
        print()
        s3_report(args.rows, results, s3_results)
        agree(args.rows, c, d)


if __name__ == "__main__":
    main()
