"""The few Kinesis calls mlpipe makes, over boto3, against AWS or any compatible endpoint.

A stream is named by its name or its ARN. ``put_records`` sends entries in PutRecords' own
limits (500 records, 5 MiB a call) and returns one error (or None) per entry: PutRecords fails
records one by one (throttling), and the caller decides what a failure means. ``read`` reads a
stream's shards from a time (or from the oldest record) up to the newest one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import StreamError
from mlpipe.stream.events import epoch_seconds

MAX_PUT_RECORDS = 500
MAX_PUT_BYTES = 5 * 1024 * 1024
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class StreamInfo:
    """What a consumer needs to know of a stream."""

    name: str
    arn: str
    created_at: float


def client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A Kinesis client; ``endpoint_url`` None means boto3's own resolution (AWS_ENDPOINT_URL,
    then AWS)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32)
    return boto3.client(
        "kinesis", endpoint_url=endpoint_url, region_name=region or DEFAULT_REGION, config=config
    )


def target(stream: str) -> dict[str, str]:
    """The request field that names ``stream``: StreamARN for an ARN, else StreamName."""
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def describe(kinesis: Any, stream: str) -> StreamInfo:
    """The stream's ARN and creation time; StreamError when it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        summary = kinesis.describe_stream_summary(**target(stream))["StreamDescriptionSummary"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "ResourceNotFoundException":
            raise StreamError(f"Kinesis stream {stream!r} does not exist") from exc
        raise StreamError(f"cannot describe Kinesis stream {stream!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise StreamError(f"cannot reach Kinesis for stream {stream!r}: {exc}") from exc
    created = summary["StreamCreationTimestamp"]
    return StreamInfo(
        summary["StreamName"],
        summary["StreamARN"],
        epoch_seconds(created),
    )


def list_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Every shard of the stream, open and closed, following ListShards' pages."""
    shards: list[dict[str, Any]] = []
    answer = kinesis.list_shards(**target(stream))
    shards.extend(answer["Shards"])
    while answer.get("NextToken"):
        answer = kinesis.list_shards(NextToken=answer["NextToken"])
        shards.extend(answer["Shards"])
    return shards


def put_records(
    kinesis: Any, stream: str, entries: Sequence[tuple[bytes, str]]
) -> list[str | None]:
    """Put ``(data, partition key)`` entries; one error message (None: written) per entry."""
    from botocore.exceptions import BotoCoreError, ClientError

    errors: list[str | None] = [None] * len(entries)
    for start, stop in _chunks(entries):
        records = [{"Data": data, "PartitionKey": key} for data, key in entries[start:stop]]
        try:
            answer = kinesis.put_records(Records=records, **target(stream))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise StreamError(f"Kinesis stream {stream!r} does not exist") from exc
            errors[start:stop] = [f"PutRecords failed: {exc}"] * (stop - start)
            continue
        except BotoCoreError as exc:  # the endpoint is away: transient for the caller
            errors[start:stop] = [f"PutRecords failed: {exc}"] * (stop - start)
            continue
        for offset, result in enumerate(answer["Records"]):
            if "ErrorCode" in result:
                errors[start + offset] = f"{result['ErrorCode']}: {result.get('ErrorMessage')}"
    return errors


def _chunks(entries: Sequence[tuple[bytes, str]]) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for index, (data, key) in enumerate(entries):
        entry_size = len(data) + len(key.encode())
        if index > start and (
            index - start == MAX_PUT_RECORDS or size + entry_size > MAX_PUT_BYTES
        ):
            yield start, index
            start, size = index, 0
        size += entry_size
    if start < len(entries):
        yield start, len(entries)


def read(
    kinesis: Any, stream: str, since: float | None = None, batch: int = 10_000
) -> Iterator[dict[str, Any]]:
    """Every record of every shard from ``since`` (epoch seconds; None: the oldest kept) up to
    the newest, shard by shard, each as GetRecords returns it."""
    for shard in list_shards(kinesis, stream):
        where: dict[str, Any] = (
            {"ShardIteratorType": "TRIM_HORIZON"}
            if since is None
            else {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": since}
        )
        iterator = kinesis.get_shard_iterator(ShardId=shard["ShardId"], **where, **target(stream))[
            "ShardIterator"
        ]
        while iterator:
            answer = kinesis.get_records(ShardIterator=iterator, Limit=batch)
            yield from answer["Records"]
            iterator = answer.get("NextShardIterator")
            if not answer["Records"] and answer.get("MillisBehindLatest", 0) == 0:
                break
            if not answer["Records"]:
                time.sleep(0.2)  # GetRecords allows 5 calls a second per shard
