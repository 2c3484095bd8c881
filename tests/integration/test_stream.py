"""Streaming as a user runs it: a model `mlpipe train` registered, a local Kinesis endpoint in
its own process (`mlpipe stream endpoint`), `mlpipe stream put` and the `mlpipe stream`
consumer as real processes, and `mlpipe serve` for the online API's answers. Also: a consumer
SIGKILLed in the middle (once anywhere, then inside a batch), the Lambda entry point configured
from its environment, and `--local`."""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import httpx
import pandas as pd
import pytest
from conftest import BIN, background, free_port, stop

from mlpipe.stream import kinesis
from mlpipe.stream.ledger import DynamoLedger
from mlpipe.stream.local import LOCAL_CREDENTIALS, create_streams

pytestmark = pytest.mark.integration

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
MODEL = "models:/boston-rf@champion"


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("stream")
    return {"root": root, "uri": trained["uri"]}


@pytest.fixture(scope="module")
def endpoint(store):
    """The local Kinesis endpoint as its own process on a free port: it outlives consumers."""
    url = f"http://127.0.0.1:{free_port()}"
    args = [str(BIN / "mlpipe"), "stream", "endpoint", "--port", url.rsplit(":", 1)[1]]
    with background(args, store["root"] / "endpoint.log", f"{url}/moto-api/"):
        yield url


@pytest.fixture(scope="module")
def env(store, endpoint):
    """What a user exports to use the endpoint and the model."""
    return {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": store["uri"],
    }


@pytest.fixture(scope="module")
def client(env):
    os.environ.update(LOCAL_CREDENTIALS)
    return kinesis.client(env["AWS_ENDPOINT_URL"], "us-east-1")


@pytest.fixture
def streams(client):
    tag = uuid.uuid4().hex[:6]
    names = [f"in-{tag}", f"out-{tag}", f"dead-{tag}"]
    create_streams(client, names, shards=2)
    return names


@pytest.fixture(scope="module")
def api(store):
    """`mlpipe serve` on the same model: the online answers the stream must match."""
    url = f"http://127.0.0.1:{free_port()}"
    args = [str(BIN / "mlpipe"), "serve", "--model", MODEL, "--port", url.rsplit(":", 1)[1]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    with background(args, store["root"] / "serve.log", f"{url}/ready", cwd=store["root"], env=env):
        yield url


def houses(n: int, prefix: str = "h") -> list[dict]:
    frame = pd.read_csv(BOSTON).drop(columns=["MEDV"]).astype("float64")
    return [{"id": f"{prefix}{i}", **frame.iloc[i % len(frame)].to_dict()} for i in range(n)]


class Tail:
    """Reads a stream as it grows: one iterator per shard, kept between calls."""

    def __init__(self, client, stream: str) -> None:
        self.client, self.records = client, []
        self.iterators = [
            client.get_shard_iterator(
                StreamName=stream, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for s in kinesis.list_shards(client, stream)
        ]

    def poll(self) -> list[dict]:
        for i, iterator in enumerate(self.iterators):
            while True:
                answer = self.client.get_records(ShardIterator=iterator, Limit=10_000)
                iterator = answer["NextShardIterator"]
                self.records.extend(json.loads(r["Data"]) for r in answer["Records"])
                if not answer["Records"]:
                    break
            self.iterators[i] = iterator
        return self.records

    def wait_for(self, count: int, proc: subprocess.Popen, seconds: float = 240) -> list[dict]:
        deadline = time.monotonic() + seconds
        while len(self.poll()) < count:
            assert proc.poll() is None, f"the consumer exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{len(self.records)} of {count} records came"
            time.sleep(0.2)
        return self.records


class Consumer:
    """`mlpipe stream` as a process, its stderr in a log file."""

    def __init__(self, root: Path, env: dict, streams: list[str], *args: str) -> None:
        self.log_path = root / f"consumer-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *(str(BIN / "mlpipe"), "stream", "--model", MODEL, "--input", streams[0]),
                *("--output", streams[1], "--dead-letter", streams[2], *args),
            ],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, signum: int) -> str:
        os.killpg(self.proc.pid, signum)
        self.proc.wait(timeout=60)
        self.log.close()
        return self.log_path.read_text()


def put_file(tmp_path: Path, env: dict, stream: str, lines: list[str]) -> str:
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [str(BIN / "mlpipe"), "stream", "put", "--stream", stream, "--file", "records.jsonl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_record_gets_one_prediction_equal_to_the_online_api(
    store, env, client, streams, api, tmp_path
):
    records = houses(300)
    lines = [json.dumps(r) for r in records]
    lines.insert(100, "{not json")
    lines.insert(200, json.dumps({**records[5], "id": "bad-rm", "RM": "six"}))
    lines.append(json.dumps(records[7]))  # the producer sent h7 twice
    assert put_file(tmp_path, env, streams[0], lines) == "put 303 records on " + streams[0] + "\n"
    consumer = Consumer(tmp_path, env, streams, "--state", str(tmp_path / "state.db"))
    out = Tail(client, streams[1]).wait_for(300, consumer.proc)
    dead = Tail(client, streams[2]).wait_for(2, consumer.proc)
    time.sleep(1)  # nothing more may come
    log = consumer.signal(signal.SIGTERM)
    assert consumer.proc.returncode == 0, log
    assert "stopped: 303 records: 300 scored, 2 dead-lettered, 1 duplicates skipped" in log

    assert len(Tail(client, streams[1]).poll()) == 300
    by_id = {o["id"]: o for o in out}
    assert sorted(by_id) == sorted(r["id"] for r in records)
    online = httpx.post(
        f"{api}/invocations",
        json={"dataframe_records": [{k: v for k, v in r.items() if k != "id"} for r in records]},
        timeout=30,
    ).json()["predictions"]
    assert [by_id[r["id"]]["prediction"] for r in records] == online  # exactly equal
    assert {o["model_version"] for o in out} == {"1"}

    reasons = sorted(d["reason"] for d in dead)
    assert reasons[0] == "field 'RM': is a string ('six'); a number is required"
    assert reasons[1].startswith("the record is not valid JSON")
    assert all(d["key"].startswith("shardId-") for d in dead)  # poison is keyed by position
    poison = [base64.b64decode(d["data"]).decode() for d in dead]
    assert "{not json" in poison


def test_a_consumer_killed_midway_loses_nothing_and_writes_nothing_twice(
    store, env, client, streams, tmp_path
):
    total = 8_000
    entries = [(json.dumps(r).encode(), r["id"]) for r in houses(total, prefix="s")]
    assert kinesis.put_records(client, streams[0], entries) == [None] * total
    state = ["--state", str(tmp_path / "state.db"), "--batch-size", "100"]
    tail = Tail(client, streams[1])
    logs = []
    consumer = Consumer(tmp_path, env, streams, *state)
    tail.wait_for(1_500, consumer.proc)
    logs.append(consumer.signal(signal.SIGKILL))  # somewhere
    for _ in range(5):  # then inside a batch: claimed in the ledger, not yet marked written
        consumer = Consumer(tmp_path, env, streams, *state)
        tail.wait_for(len(tail.records) + 300, consumer.proc)
        wait_for_claims(tmp_path / "state.db", consumer.proc)
        logs.append(consumer.signal(signal.SIGKILL))
        if in_flight(tmp_path / "state.db"):
            break
    else:
        pytest.fail("the consumer was never caught with a batch in flight")
    consumer = Consumer(tmp_path, env, streams, *state)
    out = tail.wait_for(total, consumer.proc)
    time.sleep(2)
    logs.append(consumer.signal(signal.SIGTERM))
    assert consumer.proc.returncode == 0, logs[-1]
    assert re.search(r"; [1-9]\d* interrupted record\(s\) to check", logs[-1]), logs[-1]
    assert "were claimed by a writer that stopped" in logs[-1]

    counts = collections.Counter(o["id"] for o in tail.poll())
    assert len(out) == total, f"duplicates: {[k for k, c in counts.items() if c > 1][:10]}"
    assert sorted(counts) == sorted(f"s{i}" for i in range(total))
    assert set(counts.values()) == {1}
    assert Tail(client, streams[2]).poll() == []


def in_flight(state: Path) -> int:
    """Keys the consumer claimed and has not marked written (read beside it: WAL mode)."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM ledger WHERE status = 'INPROGRESS'").fetchone()[0]


def wait_for_claims(state: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not in_flight(state):
        assert proc.poll() is None and time.monotonic() < deadline


def test_the_lambda_entry_point_loads_the_model_once_from_its_environment(
    store, env, client, streams, monkeypatch, restore_mlflow_uris
):
    from mlpipe.stream import function, lambda_handler
    from mlpipe.stream.events import kinesis_event

    url = env["AWS_ENDPOINT_URL"]
    dynamodb = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    table = f"ledger-{uuid.uuid4().hex[:6]}"
    DynamoLedger.create_table(dynamodb, table)
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", "MLFLOW_TRACKING_URI", *LOCAL_CREDENTIALS):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("MLPIPE_MODEL_URI", MODEL)
    monkeypatch.setenv("MLPIPE_OUTPUT_STREAM", streams[1])
    monkeypatch.setenv("MLPIPE_DEAD_LETTER_STREAM", streams[2])
    monkeypatch.setenv("MLPIPE_IDEMPOTENCY_TABLE", table)
    monkeypatch.setattr(function, "_handler", None)

    entries = [(json.dumps(r).encode(), r["id"]) for r in houses(20, prefix="l")]
    kinesis.put_records(client, streams[0], [*entries, (b"[]", "x")])
    shard = kinesis.list_shards(client, streams[0])[0]["ShardId"]
    iterator = client.get_shard_iterator(
        StreamName=streams[0], ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = client.get_records(ShardIterator=iterator)["Records"]
    event = kinesis_event(
        records, shard, "arn:aws:kinesis:us-east-1:123456789012:stream/in", "us-east-1"
    )

    assert lambda_handler(event, None) == {"batchItemFailures": []}
    cold = function._handler
    assert cold is not None and cold.model.version == "1"
    assert lambda_handler(event, None) == {"batchItemFailures": []}  # redelivered
    assert function._handler is cold  # loaded once per container
    written = [json.loads(r["Data"]) for r in kinesis.read(client, streams[1])]
    scored = [r for r in records if r["Data"] != b"[]"]
    assert sorted(o["sequence_number"] for o in written) == sorted(
        r["SequenceNumber"] for r in scored
    )
    items = dynamodb.scan(TableName=table)["Items"]
    assert {i["status"]["S"] for i in items} == {"COMPLETED"}
    assert len(items) == len(records)


def test_local_mode_runs_as_the_readme_shows(store, tmp_path):
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log_path = tmp_path / "local.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlpipe"), "stream", "--local", "--local-port", str(port)],
            cwd=tmp_path,
            env={**base, "MLFLOW_TRACKING_URI": store["uri"]},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while "consuming mlpipe-input" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.2)
            exports = re.search(r"export (.+)", log_path.read_text()).group(1)
            user = {**base, **dict(pair.split("=", 1) for pair in exports.split())}
            assert user["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
            put_file(tmp_path, user, "mlpipe-input", [json.dumps(r) for r in houses(10)])
            lines: list[str] = []
            for _ in range(100):
                read = subprocess.run(
                    [str(BIN / "mlpipe"), "stream", "read", "--stream", "mlpipe-output"],
                    env=user, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                lines = read.stdout.splitlines()
                if len(lines) == 10:
                    break
                time.sleep(0.3)
            assert sorted(json.loads(line)["id"] for line in lines) == sorted(
                f"h{i}" for i in range(10)
            )
        finally:
            stop(proc)
