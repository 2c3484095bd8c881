"""The consumer as Lambda's event source mapping: checkpoints, ReportBatchItemFailures, bisection
on a function error, retries then the dead-letter stream. Real streams on a local endpoint
(moto over HTTP); the handlers here are scripted, to fail exactly where a test needs it."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from mlpipe.errors import UserError
from mlpipe.stream import kinesis
from mlpipe.stream.consumer import Consumer, ConsumerSettings, _Shard
from mlpipe.stream.events import failures_response
from mlpipe.stream.state import LocalState

FAST = {"poll_seconds": 0.05, "max_retries": 2}


@pytest.fixture
def streams(new_streams):
    return new_streams("in", "dead")


def put(client, stream: str, numbers: range) -> None:
    entries = [(json.dumps({"n": n}).encode(), f"k{n}") for n in numbers]
    assert kinesis.put_records(client, stream, entries) == [None] * len(entries)


class Script:
    """A handler that records what it saw, fails the records ``fail`` names (by ``n``) the first
    ``times`` times it sees them, and raises on a batch holding ``explode``."""

    def __init__(self, expect: set[int], fail=(), times: int = 1, explode=None) -> None:
        self.expect, self.fail, self.times, self.explode = expect, set(fail), times, explode
        self.seen: dict[int, int] = {}
        self.done: list[int] = []
        self.events: list[list[int]] = []

    def __call__(self, event, context):
        assert context.get_remaining_time_in_millis() > 0
        numbers = [
            json.loads(base64.b64decode(r["kinesis"]["data"]))["n"] for r in event["Records"]
        ]
        self.events.append(numbers)
        if self.explode in numbers:
            self.seen[self.explode] = self.seen.get(self.explode, 0) + 1
            raise RuntimeError("boom")
        failed = []
        for n, record in zip(numbers, event["Records"], strict=True):
            self.seen[n] = self.seen.get(n, 0) + 1
            if n in self.fail and self.seen[n] <= self.times:
                failed.append(record["kinesis"]["sequenceNumber"])
            elif n not in self.done:
                self.done.append(n)
        return failures_response(failed)


def consume(client, streams, tmp_path, script, given_up: int = 0, **settings) -> Consumer:
    """Run a consumer until ``script`` handled every record it expects and ``given_up``
    records went to the dead-letter stream."""
    state = LocalState(tmp_path / "state.db")
    info = kinesis.describe(client, streams[0])
    consumer = Consumer(
        client,
        info,
        script,
        state,
        ConsumerSettings(**{**FAST, **settings}),
        "us-east-1",
        dead_letter=streams[1],
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    for _ in range(3000):
        if script.expect <= set(script.done) and consumer.progress.given_up >= given_up:
            break
        stop.wait(0.02)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the consumer did not stop"
    state.close()
    return consumer


def dead_letters(client, stream: str) -> dict[int, str]:
    letters = [json.loads(r["Data"]) for r in kinesis.read(client, stream)]
    return {json.loads(base64.b64decode(d["data"]))["n"]: d["reason"] for d in letters}


def test_every_record_is_handled_once_and_a_restart_resumes_at_the_checkpoint(
    client, streams, tmp_path
):
    put(client, streams[0], range(50))
    first = Script(expect=set(range(50)))
    consume(client, streams, tmp_path, first, batch_size=7)
    assert sorted(first.done) == list(range(50))
    assert max(len(e) for e in first.events) <= 7
    put(client, streams[0], range(50, 60))
    second = Script(expect=set(range(50, 60)))
    consume(client, streams, tmp_path, second)
    assert sorted(second.seen) == list(range(50, 60))  # nothing before the checkpoint again


def test_a_partial_failure_is_retried_from_the_lowest_failed_record(client, new_streams, tmp_path):
    names = new_streams("in", "dead", shards=1)  # one shard: one ordered batch
    put(client, names[0], range(10))
    script = Script(expect=set(range(10)), fail={4, 6}, times=1)
    consumer = consume(client, names, tmp_path, script, batch_size=10)
    assert script.events[0] == list(range(10))
    assert script.events[1] == list(range(4, 10))  # from the lowest failure, as Lambda does
    assert all(script.seen[n] == 1 for n in range(4))
    assert sorted(script.done) == list(range(10))
    assert consumer.progress.retries == 1
    assert dead_letters(client, names[1]) == {}


def test_records_that_keep_failing_go_to_the_dead_letter_stream_after_the_retries(
    client, new_streams, tmp_path
):
    names = new_streams("in", "dead", shards=1)
    put(client, names[0], range(6))
    script = Script(expect=set(range(6)) - {3}, fail={3}, times=99)
    consumer = consume(client, names, tmp_path, script, 1, batch_size=6, max_retries=2)
    assert script.seen[3] == 3  # the first attempt and two retries
    assert dead_letters(client, names[1]) == {3: "not processed after 3 attempt(s)"}
    assert consumer.progress.given_up == 1
    # the shard went on past it: a restart starts after the batch
    put(client, names[0], range(6, 8))
    after = Script(expect={6, 7})
    consume(client, names, tmp_path, after)
    assert sorted(after.seen) == [6, 7]


def test_a_function_error_bisects_the_batch_down_to_the_bad_record(client, new_streams, tmp_path):
    names = new_streams("in", "dead", shards=1)
    put(client, names[0], range(8))
    script = Script(expect=set(range(8)) - {5}, explode=5)
    consumer = consume(client, names, tmp_path, script, 1, batch_size=8, max_retries=1)
    assert sorted(script.done) == [0, 1, 2, 3, 4, 6, 7]
    assert all(script.seen[n] == 1 for n in script.done)  # the halves without 5: once each
    assert consumer.progress.bisections == 3  # 8 -> 4 -> 2 -> 1
    letters = dead_letters(client, names[1])
    assert list(letters) == [5]
    assert letters[5] == "not processed after 2 attempt(s): RuntimeError: boom"


def test_one_consumer_per_state_file(tmp_path):
    held = LocalState(tmp_path / "state.db")
    with pytest.raises(UserError, match=r"in use by mlpipe stream \(pid \d+\)"):
        LocalState(tmp_path / "state.db")
    held.close()
    LocalState(tmp_path / "state.db").close()


def test_claims_left_by_a_dead_run_are_ended_when_the_state_opens(tmp_path):
    state = LocalState(tmp_path / "state.db")
    state.ledger.claim(["a", "b"], now=10.0, lease_until=10**12)
    state.ledger.complete(["b"], now=11.0)
    state.close()
    reopened = LocalState(tmp_path / "state.db")
    assert reopened.interrupted_claims == 1
    claims = reopened.ledger.claim(["a", "b"], now=12.0, lease_until=100.0)
    assert claims.stale == {"a": 10.0}
    assert claims.done == {"b"}


def test_child_shards_wait_until_their_parents_are_read_to_the_end():
    consumer = Consumer.__new__(Consumer)
    consumer.shards = {
        "p": _Shard("p", ()),
        "q": _Shard("q", ()),
        "c1": _Shard("c1", ("p",)),
        "m": _Shard("m", ("p", "q")),  # a merge of p and q
    }
    assert [s.shard_id for s in consumer._readable()] == ["p", "q"]
    consumer.shards["p"].ended = True
    assert [s.shard_id for s in consumer._readable()] == ["q", "c1"]
    consumer.shards["q"].ended = True
    assert [s.shard_id for s in consumer._readable()] == ["c1", "m"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be 1 to 10000"),
        ({"batch_size": 10_001}, "--batch-size must be 1 to 10000"),
        ({"max_retries": -1}, "--max-retries"),
        ({"starting_position": "AT_TIMESTAMP"}, "--starting-position must be one of"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        ConsumerSettings(**settings)
