"""Kinesis records as Lambda sees them, and what the stream handler writes for each.

A producer puts one JSON object per record: the model's feature values and an optional ``id``
(a string or an integer). Lambda hands the function an event of such records (base64 data, the
shard in ``eventID``); ``decode`` turns one into an ``Item``, or an ``Item`` with the reason it
can never be scored. The idempotency key of a record is its ``id`` when it has one (so a record
the producer sent twice is scored once), else its shard and sequence number (so a record Lambda
delivered twice is scored once).

``kinesis_event`` builds the event Lambda would build from GetRecords' answer, so the local
consumer calls the handler with exactly what AWS would. Pure: no boto3, no model.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

ID_FIELD = "id"
MAX_ID_LENGTH = 256  # Kinesis' own limit for a partition key


@dataclass(frozen=True)
class Item:
    """One record of an event, decoded: its features, or why it can never be scored."""

    sequence_number: str
    shard_id: str
    partition_key: str
    data: bytes
    key: str
    record_id: str | int | None = None
    features: dict[str, Any] | None = None
    reason: str | None = None  # set when the record is poison: bad JSON, a bad id, ...

    def as_poison(self, reason: str) -> Item:
        """This record, refused for ``reason``. Poison is keyed by shard and sequence number even
        when it has an id, so a corrected record sent again under that id is scored."""
        key = position_key(self.shard_id, self.sequence_number)
        return replace(self, key=key, features=None, reason=reason)


def position_key(shard_id: str, sequence_number: str) -> str:
    """The idempotency key of a record without an id: where it sits in the stream."""
    return f"{shard_id}:{sequence_number}"


def shard_of(record: Mapping[str, Any]) -> str:
    """The shard of a Lambda Kinesis record: ``eventID`` is ``shardId-...:sequenceNumber``."""
    return str(record.get("eventID", "")).rsplit(":", 1)[0] or "unknown-shard"


def decode(record: Mapping[str, Any]) -> Item:
    """One Lambda Kinesis record as an ``Item``; a record that is not a JSON object of
    features with a valid ``id`` gets ``reason`` set instead of ``features``."""
    kinesis = record["kinesis"]
    sequence_number = kinesis.get("sequenceNumber")
    if not sequence_number:
        # without it no failure can be reported: the event itself is broken, not one record
        raise ValueError(f"a Kinesis record without a sequenceNumber: {record!r:.200}")
    shard_id = shard_of(record)
    sequence_number = str(sequence_number)
    position = position_key(shard_id, sequence_number)
    partition_key = str(kinesis.get("partitionKey") or sequence_number)
    reason: str | None
    payload: dict[str, Any]
    try:
        data = base64.b64decode(kinesis.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        data, payload, reason = b"", {}, "the record's data is not base64"
    else:
        payload, reason = _parse(data)
    if reason is None:
        record_id = payload.pop(ID_FIELD, None)
        reason = _id_problem(record_id)
    if reason is not None:
        return Item(sequence_number, shard_id, partition_key, data, position, reason=reason)
    key = position if record_id is None else f"id:{record_id}"
    return Item(sequence_number, shard_id, partition_key, data, key, record_id, payload)


def _parse(data: bytes) -> tuple[dict[str, Any], str | None]:
    """The record's JSON object, or why it is not one."""
    try:
        payload = json.loads(data)
    except UnicodeDecodeError:
        return {}, "the record is not UTF-8 text"
    except json.JSONDecodeError as exc:
        return {}, f"the record is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return {}, f"expected a JSON object of features, got {type(payload).__name__}"
    return payload, None


def _id_problem(record_id: Any) -> str | None:
    if record_id is None:
        return None
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        return f"'{ID_FIELD}' must be a string or an integer, got {json.dumps(record_id)}"
    if isinstance(record_id, str) and not 0 < len(record_id) <= MAX_ID_LENGTH:
        return f"'{ID_FIELD}' must have 1 to {MAX_ID_LENGTH} characters"
    return None


def prediction_record(
    item: Item,
    prediction: Any,
    model_name: str | None,
    model_version: str | None,
    at: float,
    probabilities: dict[str, float] | None = None,
) -> bytes:
    """What the output stream gets for a scored record (a classifier's: the label, and each
    class's probability by label)."""
    return _dumps(
        {
            "id": item.record_id,
            "key": item.key,
            "prediction": prediction,
            **({"probabilities": probabilities} if probabilities is not None else {}),
            "model_name": model_name,
            "model_version": model_version,
            "shard_id": item.shard_id,
            "sequence_number": item.sequence_number,
            "scored_at": at,
        }
    )


def dead_letter_record(item: Item, at: float) -> bytes:
    """What the dead-letter stream gets for a record that can never be scored: its reason and
    its original data (base64), so it can be fixed and put again."""
    return _dumps(
        {
            "key": item.key,
            "reason": item.reason,
            "shard_id": item.shard_id,
            "sequence_number": item.sequence_number,
            "partition_key": item.partition_key,
            "data": base64.b64encode(item.data).decode("ascii"),
            "failed_at": at,
        }
    )


def failures_response(sequence_numbers: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Lambda's partial batch response (ReportBatchItemFailures); empty when all succeeded."""
    unique = dict.fromkeys(sequence_numbers)
    return {"batchItemFailures": [{"itemIdentifier": s} for s in unique if s]}


def failed_sequence_numbers(response: Any) -> list[str]:
    """The sequence numbers a handler reported as failed, as Lambda reads the response.

    Lambda treats an invalid response (an item without an identifier, or one not in the batch)
    as a failure of the whole batch; ``ValueError`` says so here."""
    if response is None:
        return []
    if not isinstance(response, dict):
        raise ValueError(f"the handler returned {type(response).__name__}, not an object")
    failures = response.get("batchItemFailures") or []
    identifiers = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
    if not all(isinstance(i, str) and i for i in identifiers):
        raise ValueError(f"a batchItemFailures entry has no itemIdentifier: {failures!r:.200}")
    return [str(i) for i in identifiers]


def kinesis_event(
    records: Sequence[Mapping[str, Any]], shard_id: str, stream_arn: str, region: str
) -> dict[str, Any]:
    """The event Lambda's event source mapping builds from GetRecords' ``Records``."""
    return {
        "Records": [
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r["PartitionKey"],
                    "sequenceNumber": r["SequenceNumber"],
                    "data": base64.b64encode(r["Data"]).decode("ascii"),
                    "approximateArrivalTimestamp": epoch_seconds(r["ApproximateArrivalTimestamp"]),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{r['SequenceNumber']}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::000000000000:role/mlpipe-stream",
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for r in records
        ]
    }


def epoch_seconds(value: datetime | float) -> float:
    """A timestamp as boto3 returns it (a datetime) or as Lambda's events carry it (seconds)."""
    return value.timestamp() if isinstance(value, datetime) else float(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # json.dumps makes one a call


def _dumps(payload: dict[str, Any]) -> bytes:
    return _ENCODER.encode(payload).encode()
