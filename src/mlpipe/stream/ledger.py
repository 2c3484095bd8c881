"""The idempotency ledger: which record keys were written already, and which are being written.

The handler claims every key of a batch before it writes anything (``INPROGRESS``, with a lease
that ends when the invocation must have ended), and marks the keys it wrote ``COMPLETED`` after.
On the next delivery of the same key:

- ``COMPLETED``: the record was written; it is skipped and counted as a success;
- ``INPROGRESS`` with a live lease: another invocation is writing it; it is reported for retry;
- ``INPROGRESS`` with an ended lease: its writer died between claiming and finishing. Whether
  its output reached the stream is unknown, so the handler reads the output streams from the
  claim's time to find out (``Claims.stale``) before it writes again.

Two stores with the same semantics, as AWS Lambda Powertools' idempotency utility has them: a
DynamoDB table for the Lambda function (conditional writes; items expire by DynamoDB TTL), and a
SQLite table for the local consumer, in the same file as its checkpoints.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

IN_PROGRESS = "INPROGRESS"
COMPLETED = "COMPLETED"
DEFAULT_TTL_SECONDS = 24 * 3600  # Kinesis' default retention: no redelivery comes later


@dataclass
class Claims:
    """The outcome of claiming a batch's keys."""

    new: list[str] = field(default_factory=list)  # claimed now: write them
    done: set[str] = field(default_factory=set)  # written before: skip
    busy: set[str] = field(default_factory=set)  # another writer holds them: retry later
    stale: dict[str, float] = field(default_factory=dict)  # claimed again; key -> old claim time


class Ledger(Protocol):
    """Where the handler records what it wrote."""

    def claim(self, keys: Sequence[str], now: float, lease_until: float) -> Claims: ...

    def complete(self, keys: Sequence[str], now: float) -> None: ...

    def release(self, keys: Sequence[str]) -> None: ...


class SqliteLedger:
    """The ledger in a SQLite table; the connection is the caller's (autocommit mode), and so is
    the lock that keeps its threads' transactions apart."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        lock: threading.Lock | None = None,
    ) -> None:
        self.connection = connection
        self.ttl_seconds = ttl_seconds
        self.lock = lock or threading.Lock()
        connection.execute(
            "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " claimed_at REAL NOT NULL, lease_until REAL NOT NULL, expires_at REAL NOT NULL)"
        )

    def claim(self, keys: Sequence[str], now: float, lease_until: float) -> Claims:
        claims = Claims()
        with _transaction(self.connection, self.lock) as db:
            known = _select_keys(db, keys)
            rows = []
            for key in dict.fromkeys(keys):
                status, claimed_at, old_lease = known.get(key, (None, 0.0, 0.0))
                if status == COMPLETED:
                    claims.done.add(key)
                    continue
                if status == IN_PROGRESS and old_lease > now:
                    claims.busy.add(key)
                    continue
                if status == IN_PROGRESS:
                    claims.stale[key] = claimed_at
                else:
                    claims.new.append(key)
                rows.append((key, IN_PROGRESS, now, lease_until, now + self.ttl_seconds))
            db.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?)", rows)
        return claims

    def complete(self, keys: Sequence[str], now: float) -> None:
        if not keys:
            return
        with _transaction(self.connection, self.lock) as db:
            db.executemany(
                "UPDATE ledger SET status = ?, expires_at = ? WHERE key = ?",
                [(COMPLETED, now + self.ttl_seconds, key) for key in keys],
            )

    def release(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with _transaction(self.connection, self.lock) as db:
            db.executemany(
                "DELETE FROM ledger WHERE key = ? AND status = ?", [(k, IN_PROGRESS) for k in keys]
            )

    def end_leases(self) -> int:
        """Mark every claim stale: for a consumer that holds the file alone, claims left in it
        are from a run that died. Returns how many there were."""
        with _transaction(self.connection, self.lock) as db:
            return db.execute(
                "UPDATE ledger SET lease_until = 0 WHERE status = ?", (IN_PROGRESS,)
            ).rowcount

    def prune(self, now: float) -> int:
        """Forget keys past their time to live."""
        with _transaction(self.connection, self.lock) as db:
            return db.execute("DELETE FROM ledger WHERE expires_at < ?", (now,)).rowcount


@contextmanager
def _transaction(
    connection: sqlite3.Connection, lock: threading.Lock
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""
    with lock:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")


def _select_keys(
    db: sqlite3.Connection, keys: Sequence[str]
) -> dict[str, tuple[str, float, float]]:
    found: dict[str, tuple[str, float, float]] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for key, status, claimed_at, lease in db.execute(
            f"SELECT key, status, claimed_at, lease_until FROM ledger WHERE key IN ({marks})",
            chunk,
        ):
            found[key] = (status, claimed_at, lease)
    return found


class DynamoLedger:
    """The ledger in a DynamoDB table with a string hash key ``key`` and TTL on ``expires_at``.

    Each key is one conditional PutItem (DynamoDB has no conditional batch write), sent from a
    small thread pool: boto3 clients are thread-safe."""

    KEY_SCHEMA = ({"AttributeName": "key", "KeyType": "HASH"},)
    ATTRIBUTES = ({"AttributeName": "key", "AttributeType": "S"},)
    TTL_ATTRIBUTE = "expires_at"

    @classmethod
    def create_table(cls, client: Any, table: str) -> None:
        """Create the table this ledger writes (on-demand capacity, TTL on ``expires_at``)."""
        client.create_table(
            TableName=table,
            KeySchema=list(cls.KEY_SCHEMA),
            AttributeDefinitions=list(cls.ATTRIBUTES),
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=table)
        client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": cls.TTL_ATTRIBUTE},
        )

    def __init__(
        self, client: Any, table: str, ttl_seconds: float = DEFAULT_TTL_SECONDS, threads: int = 16
    ) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds
        self.threads = threads

    def claim(self, keys: Sequence[str], now: float, lease_until: float) -> Claims:
        claims = Claims()
        unique = list(dict.fromkeys(keys))
        outcomes = self._each(lambda key: self._claim_one(key, now, lease_until), unique)
        for key, (status, claimed_at) in zip(unique, outcomes, strict=True):
            if status == "new":
                claims.new.append(key)
            elif status == "stale":
                claims.stale[key] = claimed_at
            elif status == COMPLETED:
                claims.done.add(key)
            else:
                claims.busy.add(key)
        return claims

    def _claim_one(self, key: str, now: float, lease_until: float) -> tuple[str, float]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.put_item(
                TableName=self.table,
                Item={
                    "key": {"S": key},
                    "status": {"S": IN_PROGRESS},
                    "claimed_at": {"N": repr(now)},
                    "lease_until": {"N": repr(lease_until)},
                    "expires_at": {"N": str(int(now + self.ttl_seconds))},
                },
                ConditionExpression="attribute_not_exists(#k) OR "
                "(#s = :in_progress AND lease_until < :now)",
                ExpressionAttributeNames={"#k": "key", "#s": "status"},
                ExpressionAttributeValues={
                    ":in_progress": {"S": IN_PROGRESS},
                    ":now": {"N": repr(now)},
                },
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item", {})
            return old.get("status", {}).get("S", IN_PROGRESS), 0.0
        old = answer.get("Attributes")
        if old:
            return "stale", float(old["claimed_at"]["N"])
        return "new", 0.0

    def complete(self, keys: Sequence[str], now: float) -> None:
        expires = str(int(now + self.ttl_seconds))
        self._each(
            lambda key: self.client.update_item(
                TableName=self.table,
                Key={"key": {"S": key}},
                UpdateExpression="SET #s = :completed, expires_at = :expires",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":completed": {"S": COMPLETED},
                    ":expires": {"N": expires},
                },
            ),
            keys,
        )

    def release(self, keys: Sequence[str]) -> None:
        self._each(self._release_one, keys)

    def _release_one(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"key": {"S": key}},
                ConditionExpression="#s = :in_progress",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":in_progress": {"S": IN_PROGRESS}},
            )
        except ClientError as exc:  # completed meanwhile: nothing to release
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    def _each(self, call: Any, keys: Sequence[str]) -> list[Any]:
        if len(keys) <= 1:
            return [call(key) for key in keys]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(keys))) as pool:
            return list(pool.map(call, keys))
