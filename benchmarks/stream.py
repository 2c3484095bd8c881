"""Benchmark: streaming inference against the endpoint's own limit.

(a) the limit: a consumer that only reads records and writes them on (the same consumer loop,
    shard iterators and SQLite checkpoints as mlpipe's, with a handler that copies each record's
    data to the output stream: no decoding, no scoring, no idempotency ledger);
(b) `mlpipe stream`: decode, validate, claim in the ledger, score the batch (the default
    tuning's best RandomForest through the ONNX path), put the predictions, checkpoint.

Both run as their own process against one local Kinesis endpoint (`mlpipe stream endpoint`,
moto's server in a process of its own), each on fresh streams of 2 shards, with the same batch
size and the default poll interval (0.5 s), one after the other:

1. throughput: RECORDS records are put first, then the consumer starts; records/s is RECORDS
   over the time from its first output record to its last (output arrival times);
2. delay: with the consumer caught up, PACED more records are put at RATE records/s; the delay
   of each is its output's arrival time minus the moment its PutRecords returned (p50, p99).

Prints both sides, the throughput ratio and what scoring costs against the limit (target <= 10%).
Usage: python benchmarks/stream.py [--records 100000] [--batch-size 100] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import BIN, DATA, MODEL, environment

from mlpipe.processes import free_port, stop_group
from mlpipe.stream import kinesis
from mlpipe.stream.local import LOCAL_CREDENTIALS, create_streams

RELAY = """
import base64, signal, sys, threading
from pathlib import Path
from mlpipe.stream import kinesis
from mlpipe.stream.consumer import Consumer, ConsumerSettings
from mlpipe.stream.state import LocalState

endpoint, source, target, state, batch = sys.argv[1:6]
client = kinesis.client(endpoint, "us-east-1")

def relay(event, context):
    records = event["Records"]
    entries = [(base64.b64decode(r["kinesis"]["data"]), r["kinesis"]["partitionKey"])
               for r in records]
    errors = kinesis.put_records(client, target, entries)
    failed = [r["kinesis"]["sequenceNumber"] for r, e in zip(records, errors) if e]
    return {"batchItemFailures": [{"itemIdentifier": s} for s in failed]}

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
settings = ConsumerSettings(batch_size=int(batch))
consumer = Consumer(client, kinesis.describe(client, source), relay, LocalState(Path(state)),
                    settings, "us-east-1")
print("consuming", file=sys.stderr, flush=True)
consumer.run(stop)
"""


def start_endpoint(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (folder / "moto.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "mlpipe"), "stream", "endpoint", "--port", str(port), "--stream", "unused"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            kinesis.client(url).list_streams()
            return proc, url
        except Exception:  # not listening yet
            time.sleep(0.1)
    raise SystemExit("the local endpoint did not start")


def records(n: int, prefix: str) -> list[tuple[bytes, str]]:
    boston = pd.read_csv(DATA).drop(columns=["MEDV"]).astype("float64").to_dict("records")
    return [
        (json.dumps({"id": f"{prefix}{i}", **boston[i % len(boston)]}).encode(), f"{prefix}{i}")
        for i in range(n)
    ]


class Tail:
    """The output stream's records as they arrive: id -> arrival time (epoch seconds)."""

    def __init__(self, client, stream: str) -> None:
        self.client, self.arrivals = client, {}
        self.iterators = [
            client.get_shard_iterator(
                StreamName=stream, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for s in kinesis.list_shards(client, stream)
        ]

    def wait_for(self, count: int, proc: subprocess.Popen, seconds: float = 1800) -> None:
        deadline = time.monotonic() + seconds
        while len(self.arrivals) < count:
            if proc.poll() is not None:
                raise SystemExit(f"the consumer exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(self.arrivals)} of {count} records came out")
            time.sleep(1.0)
            for i, iterator in enumerate(self.iterators):
                while iterator:
                    answer = self.client.get_records(ShardIterator=iterator, Limit=10_000)
                    iterator = answer["NextShardIterator"]
                    for r in answer["Records"]:
                        arrived = r["ApproximateArrivalTimestamp"].timestamp()
                        self.arrivals[json.loads(r["Data"])["id"]] = arrived
                    if not answer["Records"]:
                        break
                self.iterators[i] = iterator


def run_side(name, command, client, env, folder, n, paced, rate) -> dict:
    tag = name.split()[0].strip("()")
    streams = [f"in-{tag}", f"out-{tag}"]
    create_streams(client, streams, shards=2)
    bulk = records(n, "b")
    errors = kinesis.put_records(client, streams[0], bulk)
    assert not any(errors), errors[:3]
    log = (folder / f"{tag}.log").open("wb")
    proc = subprocess.Popen(
        command(streams), env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        tail = Tail(client, streams[1])
        tail.wait_for(n, proc)
        times = sorted(tail.arrivals.values())
        throughput = n / (times[-1] - times[0])
        put_at = {}
        paced_records = records(paced, "p")
        began = time.time()
        for start in range(0, paced, 10):  # 10 records a call, RATE records a second
            time.sleep(max(0.0, began + start / rate - time.time()))
            chunk = paced_records[start : start + 10]
            kinesis.put_records(client, streams[0], chunk)
            put_at.update({key: time.time() for _, key in chunk})
        tail.wait_for(n + paced, proc)
        delays = np.array([tail.arrivals[key] - put_at[key] for key in put_at]) * 1000
    finally:
        stop_group(proc.pid, grace=60)
        proc.wait()
        log.close()
    return {
        "records/s": throughput,
        "p50 ms": float(np.percentile(delays, 50)),
        "p99 ms": float(np.percentile(delays, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--paced", type=int, default=3_000, help="records for the delay phase")
    parser.add_argument("--rate", type=float, default=300.0, help="records/s in the delay phase")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tracking-uri", help="a store with boston-rf@champion (else: train)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="mlpipe-bench-stream-"))
    env = {**environment(str(folder), args.tracking_uri), **LOCAL_CREDENTIALS}
    os.environ.update(LOCAL_CREDENTIALS)
    endpoint_proc, url = start_endpoint(folder)
    env["AWS_ENDPOINT_URL"] = url
    client = kinesis.client(url)
    batch = str(args.batch_size)
    sides = {
        "(a) read + write only": lambda streams: [
            sys.executable, "-c", RELAY, url, *streams, str(folder / "a.db"), batch,
        ],
        "(b) mlpipe stream": lambda streams: [
            str(BIN / "mlpipe"), "stream", "--model", MODEL, "--batch-size", batch,
            "--state", str(folder / "b.db"), "--input", streams[0], "--output", streams[1],
        ],
    }  # fmt: skip
    results = {}
    try:
        for name, command in sides.items():
            print(f"{name} ...", flush=True)
            results[name] = run_side(
                name, command, client, env, folder, args.records, args.paced, args.rate
            )
    finally:
        stop_group(endpoint_proc.pid, grace=30)
        endpoint_proc.wait()

    print(
        f"\n{args.records:,} records (throughput), then {args.paced:,} at {args.rate:.0f}/s "
        f"(delay); batch size {args.batch_size}; 2 shards; {os.cpu_count()} cores; "
        "local endpoint: mlpipe stream endpoint (moto)"
    )
    print(f"{'side':<26}{'records/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in results.items():
        print(f"{name:<26}{r['records/s']:>11,.0f}{r['p50 ms']:>9.1f}{r['p99 ms']:>9.1f}")
    a, b = (r["records/s"] for r in results.values())
    print(f"throughput ratio b/a: {b / a:.3f}; scoring costs {100 * (1 - b / a):.1f}% of the limit "
          "(target <= 10%)")  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
