"""The stream handler on events shaped as AWS documents Kinesis events for Lambda, with a real
forest, real Kinesis streams on a local endpoint (moto, over HTTP) and both idempotency ledgers
(SQLite, and DynamoDB on the same endpoint)."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid

import boto3
import numpy as np
import pytest

from mlpipe.errors import UserError
from mlpipe.stream import kinesis
from mlpipe.stream.handler import StreamHandler
from mlpipe.stream.ledger import IN_PROGRESS, DynamoLedger, SqliteLedger

# as in https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html (example event)
STREAM_ARN = "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"
SHARDS = ("shardId-000000000006", "shardId-000000000007")


def aws_record(shard: str, sequence: str, payload: object, key: str = "1") -> dict:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": sequence,
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": STREAM_ARN,
    }


def sequence(shard: int, n: int) -> str:
    """A sequence number as Kinesis writes them (56 digits, increasing within a shard)."""
    return f"4959033827149025660855969253836157109592157598913658{shard}{n:03d}"


def house(frame, i: int, **changes) -> dict:
    return {"id": f"h{i}", **frame.iloc[i].to_dict(), **changes}


class Context:
    """What Lambda's context object offers the handler."""

    function_name = "mlpipe-stream"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


@pytest.fixture
def streams(new_streams):
    return new_streams("out", "dead")


@pytest.fixture(params=["sqlite", "dynamodb"])
def ledger(request, tmp_path, aws_endpoint):
    if request.param == "sqlite":
        return SqliteLedger(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None))
    dynamodb = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
    table = f"ledger-{uuid.uuid4().hex[:8]}"
    DynamoLedger.create_table(dynamodb, table)
    return DynamoLedger(dynamodb, table)


@pytest.fixture
def handler(model, client, streams, ledger):
    return StreamHandler(model, client, streams[0], ledger, dead_letter=streams[1])


def outputs(client, stream: str) -> list[dict]:
    return [json.loads(r["Data"]) for r in kinesis.read(client, stream)]


def several_shards(frame, per_shard: int = 4) -> dict:
    return {
        "Records": [
            aws_record(shard, sequence(s, n), house(frame, s * 100 + n), key=f"h{s * 100 + n}")
            for s, shard in enumerate(SHARDS)
            for n in range(per_shard)
        ]
    }


def test_an_all_good_batch_from_several_shards_is_scored_in_one_call(
    handler, client, streams, frame, model
):
    event = several_shards(frame)
    assert handler(event, Context()) == {"batchItemFailures": []}
    written = {o["id"]: o for o in outputs(client, streams[0])}
    assert len(written) == 8
    rows = [s * 100 + n for s in range(2) for n in range(4)]
    expected = model.native.predict(frame.iloc[rows].to_numpy())
    for row, prediction in zip(rows, expected, strict=True):
        out = written[f"h{row}"]
        assert out["prediction"] == prediction  # the ONNX path is bit-exact for forests
        assert (out["model_name"], out["model_version"]) == ("boston-rf", "3")
        assert out["sequence_number"] == sequence(row // 100, row % 100)
        assert out["shard_id"] == SHARDS[row // 100]
    assert outputs(client, streams[1]) == []


def test_a_classifier_puts_the_label_and_each_class_probability(
    client, streams, frame, classifier, tmp_path
):
    ledger = SqliteLedger(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None))
    handler = StreamHandler(classifier, client, streams[0], ledger, dead_letter=streams[1])
    assert handler(several_shards(frame), Context()) == {"batchItemFailures": []}
    written = {o["id"]: o for o in outputs(client, streams[0])}
    rows = [s * 100 + n for s in range(2) for n in range(4)]
    forest = classifier.native.model
    labels = forest.predict(frame.iloc[rows])
    proba = forest.predict_proba(frame.iloc[rows])
    for row, label, chances in zip(rows, labels, proba, strict=True):
        out = written[f"h{row}"]
        assert out["prediction"] == label
        assert out["probabilities"] == dict(zip(forest.classes_, chances, strict=True))
        assert (out["model_name"], out["model_version"]) == ("boston-classes", "2")


def test_poison_in_the_middle_goes_to_the_dead_letter_stream_and_is_not_retried(
    handler, client, streams, frame
):
    good = [aws_record(SHARDS[0], sequence(0, n), house(frame, n)) for n in range(5)]
    poison = {
        sequence(0, 10): b"{not json",
        sequence(0, 11): house(frame, 11, RM="six"),
        sequence(0, 12): {k: v for k, v in house(frame, 12).items() if k != "LSTAT"},
        sequence(0, 13): house(frame, 13, id=True),
        sequence(0, 14): [1, 2, 3],
        sequence(0, 15): house(frame, 15, NOX=float("nan")),
        sequence(0, 16): house(frame, 16, extra=1.0),
    }
    records = [*good[:2], *(aws_record(SHARDS[0], s, p) for s, p in poison.items()), *good[2:]]
    assert handler({"Records": records}, Context()) == {"batchItemFailures": []}
    assert sorted(o["id"] for o in outputs(client, streams[0])) == [f"h{n}" for n in range(5)]
    dead = {d["sequence_number"]: d for d in outputs(client, streams[1])}
    assert set(dead) == set(poison)
    reasons = {s: dead[s]["reason"] for s in poison}
    assert "not valid JSON" in reasons[sequence(0, 10)]
    assert reasons[sequence(0, 11)] == "field 'RM': is a string ('six'); a number is required"
    assert reasons[sequence(0, 12)] == "field 'LSTAT': missing feature"
    assert "'id' must be a string or an integer" in reasons[sequence(0, 13)]
    assert reasons[sequence(0, 14)] == "expected a JSON object of features, got list"
    assert "NOX" in reasons[sequence(0, 15)]
    assert "field 'extra': unknown feature" in reasons[sequence(0, 16)]
    assert base64.b64decode(dead[sequence(0, 10)]["data"]) == b"{not json"
    assert handler.totals.dead_lettered == 7


def test_a_record_delivered_twice_is_written_once(handler, client, streams, frame):
    event = several_shards(frame, per_shard=3)
    twice = {"Records": [*event["Records"], event["Records"][0]]}  # and within one event
    assert handler(twice, Context()) == {"batchItemFailures": []}
    assert handler(event, Context()) == {"batchItemFailures": []}  # Lambda's redelivery
    # the producer sent h0 again: a new sequence number, the same id
    again = aws_record(SHARDS[1], sequence(1, 50), house(frame, 0))
    assert handler({"Records": [again]}, Context()) == {"batchItemFailures": []}
    written = outputs(client, streams[0])
    assert sorted(o["id"] for o in written) == sorted(
        f"h{s * 100 + n}" for s in (0, 1) for n in range(3)
    )
    assert handler.totals.scored == 6
    assert handler.totals.duplicates == 1 + 6 + 1


def test_without_an_id_the_shard_and_sequence_number_are_the_key(handler, client, streams, frame):
    features = {k: v for k, v in house(frame, 1).items() if k != "id"}
    event = {"Records": [aws_record(s, sequence(i, 1), features) for i, s in enumerate(SHARDS)]}
    handler(event, Context())
    handler(event, Context())
    keys = sorted(o["key"] for o in outputs(client, streams[0]))
    assert keys == [f"{SHARDS[0]}:{sequence(0, 1)}", f"{SHARDS[1]}:{sequence(1, 1)}"]
    assert all(o["id"] is None for o in outputs(client, streams[0]))


class Throttled:
    """The real client, except that PutRecords fails the records whose id is in ``ids`` with
    Kinesis' throttling error, as a hot shard does."""

    def __init__(self, client, ids: set[str]) -> None:
        self.client, self.ids = client, ids

    def put_records(self, Records, **target):
        hot = [json.loads(r["Data"]).get("id") in self.ids for r in Records]
        kept = [r for r, h in zip(Records, hot, strict=True) if not h]
        answer = self.client.put_records(Records=kept, **target) if kept else {"Records": []}
        results = iter(answer["Records"])
        throttled = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate"}
        return {"Records": [throttled if h else next(results) for h in hot]}

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_throttled_put_is_reported_for_retry_then_written_once(
    model, client, streams, ledger, frame
):
    event = several_shards(frame, per_shard=3)
    hot = StreamHandler(model, Throttled(client, {"h1", "h101"}), streams[0], ledger, streams[1])
    response = hot(event, Context())
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": sequence(0, 1)},
            {"itemIdentifier": sequence(1, 1)},
        ]
    }
    assert len(outputs(client, streams[0])) == 4
    # Lambda retries from the lowest failed record of the shard: the rest come again too
    cool = StreamHandler(model, client, streams[0], ledger, streams[1])
    assert cool(event, Context()) == {"batchItemFailures": []}
    written = outputs(client, streams[0])
    assert sorted(o["id"] for o in written) == sorted(
        f"h{s * 100 + n}" for s in (0, 1) for n in range(3)
    )


def test_a_writer_that_died_after_its_put_is_not_written_again(
    handler, client, streams, ledger, frame
):
    event = several_shards(frame, per_shard=2)
    # a first invocation claimed all four, put two, and died before marking them done
    ledger.claim(["id:h0", "id:h1", "id:h100", "id:h101"], now=1000.0, lease_until=1060.0)
    first = StreamHandler(
        handler.model,
        client,
        streams[0],
        SqliteLedger(sqlite3.connect(":memory:", isolation_level=None)),
    )
    first({"Records": event["Records"][:2]}, Context())  # writes h0 and h1 only
    assert handler(event, Context()) == {"batchItemFailures": []}
    assert sorted(o["id"] for o in outputs(client, streams[0])) == ["h0", "h1", "h100", "h101"]
    assert handler.totals.recovered == 2


def test_a_key_another_invocation_holds_is_retried_later(handler, ledger, frame, client, streams):
    event = several_shards(frame, per_shard=1)
    now = handler.clock()
    ledger.claim(["id:h100"], now=now, lease_until=now + 600)
    assert handler(event, Context()) == {"batchItemFailures": [{"itemIdentifier": sequence(1, 0)}]}
    assert [o["id"] for o in outputs(client, streams[0])] == ["h0"]


def test_a_failing_model_releases_its_claims_and_raises(model, client, streams, frame, tmp_path):
    class Broken:
        kind = "broken"

        def predict(self, matrix):
            raise RuntimeError("out of memory")

    from dataclasses import replace

    ledger = SqliteLedger(sqlite3.connect(tmp_path / "l.db", isolation_level=None))
    broken = StreamHandler(replace(model, predictor=Broken()), client, streams[0], ledger)
    with pytest.raises(RuntimeError):
        broken(several_shards(frame), Context())
    in_progress = ledger.connection.execute(
        "SELECT count(*) FROM ledger WHERE status = ?", (IN_PROGRESS,)
    ).fetchone()
    assert in_progress == (0,)
    assert outputs(client, streams[0]) == []


def test_a_model_with_an_id_feature_is_refused(model, client, ledger):
    from dataclasses import replace

    from mlpipe.contract import InputContract

    with_id = replace(model, contract=InputContract(("id", "x"), ("double", "double")))
    with pytest.raises(UserError, match="feature named 'id'"):
        StreamHandler(with_id, client, "out", ledger)


def test_an_empty_event_has_no_failures(handler):
    assert handler({"Records": []}, Context()) == {"batchItemFailures": []}


def test_predictions_equal_the_native_model_for_many_rows(handler, client, streams, frame, model):
    records = [
        aws_record(SHARDS[0], sequence(0, n), house(frame, n)) for n in range(len(frame))[:300]
    ]
    handler({"Records": records}, Context())
    got = {o["id"]: o["prediction"] for o in outputs(client, streams[0])}
    expected = model.native.predict(frame.iloc[:300].to_numpy())
    np.testing.assert_array_equal([got[f"h{n}"] for n in range(300)], expected)


def test_the_lambda_function_names_each_missing_or_bad_setting():
    from mlpipe.errors import SpecError
    from mlpipe.stream.function import FunctionSettings

    with pytest.raises(SpecError) as error:
        FunctionSettings.from_env(
            {
                "MLPIPE_MODEL_URI": "models:/boston-rf@champion",
                "MLPIPE_IDEMPOTENCY_TTL_SECONDS": "0",
            }
        )
    message = str(error.value)
    assert "MLPIPE_OUTPUT_STREAM: Field required" in message
    assert "MLPIPE_IDEMPOTENCY_TABLE: Field required" in message
    assert "MLPIPE_IDEMPOTENCY_TTL_SECONDS: Input should be greater than 0 (got '0')" in message
    settings = FunctionSettings.from_env(
        {"MLPIPE_MODEL_URI": "m", "MLPIPE_OUTPUT_STREAM": "o", "MLPIPE_IDEMPOTENCY_TABLE": "t"}
    )
    assert (settings.dead_letter_stream, settings.tracking_uri) == (None, None)
