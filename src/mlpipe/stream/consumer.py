"""``mlpipe stream``: read every shard of a Kinesis stream and call the handler as Lambda would.

This is Lambda's event source mapping, run anywhere (a laptop, a container, a pod):

- each shard is read with GetShardIterator/GetRecords, a batch at a time, from its checkpoint
  (or from ``starting_position`` the first time); children of a split or merged shard are read
  only after their parents are read to the end, as Kinesis' ordering requires;
- a batch becomes the event Lambda would build (``events.kinesis_event``) and goes to the same
  handler the Lambda function runs;
- the answer is honoured as with ``FunctionResponseTypes: [ReportBatchItemFailures]``: the shard
  is checkpointed just before the lowest failed sequence number and the batch is retried from
  there; a handler error bisects the batch (``BisectBatchOnFunctionError``); after
  ``max_retries`` retries, or once the oldest record is older than ``max_record_age_seconds``,
  the failed records go to the dead-letter stream (the mapping's ``OnFailure`` destination) and
  the shard moves on;
- a checkpoint is written only after the handler returned, so the outputs are on their stream
  before the checkpoint moves: a crash redelivers, and the handler's ledger keeps the redelivery
  from writing twice.

It stops between batches when ``stop`` is set (SIGTERM, Ctrl-C).

One consumer reads all the shards, one batch at a time: the handler scores a batch in one call,
and Kinesis' read limits (5 GetRecords a second per shard) are far above what one process scores.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlpipe.errors import UserError
from mlpipe.stream import kinesis
from mlpipe.stream.events import (
    Item,
    dead_letter_record,
    epoch_seconds,
    failed_sequence_numbers,
    kinesis_event,
    position_key,
)
from mlpipe.stream.kinesis import StreamError, StreamInfo
from mlpipe.stream.state import SHARD_END, LocalState

log = logging.getLogger("mlpipe.stream")

Handler = Callable[[Mapping[str, Any], Any], Any]
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST")


@dataclass(frozen=True)
class ConsumerSettings:
    """The event source mapping's settings, with Lambda's names."""

    batch_size: int = 100  # BatchSize
    max_retries: int = 3  # MaximumRetryAttempts
    max_record_age_seconds: float = 3600.0  # MaximumRecordAgeInSeconds
    bisect_on_error: bool = True  # BisectBatchOnFunctionError
    starting_position: str = "TRIM_HORIZON"  # StartingPosition
    poll_seconds: float = 0.5  # how long to wait when every shard is caught up
    invocation_seconds: float = 60.0  # the handler's "timeout": its claims' lease
    shard_refresh_seconds: float = 60.0  # how often to look for new shards

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise UserError(
                f"--batch-size must be 1 to 10000 (GetRecords' limit), not {self.batch_size}"
            )
        if self.max_retries < 0:
            raise UserError(f"--max-retries must be 0 or more, not {self.max_retries}")
        if self.max_record_age_seconds <= 0:
            raise UserError("--max-record-age must be positive")
        if self.starting_position not in STARTING_POSITIONS:
            raise UserError(f"--starting-position must be one of {', '.join(STARTING_POSITIONS)}")


@dataclass
class Progress:
    """Counts since the consumer started."""

    records: int = 0
    batches: int = 0
    retries: int = 0
    bisections: int = 0
    given_up: int = 0
    lag_millis: int = 0


@dataclass
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    iterator: str | None = None
    ended: bool = False


@dataclass
class InvocationContext:
    """The parts of Lambda's context object a handler reads."""

    timeout_seconds: float
    function_name: str = "mlpipe-stream"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.time)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_seconds - time.time()) * 1000))


class Consumer:
    """Reads ``stream`` and feeds ``handler``; checkpoints in ``state``.

    Each readable shard has a thread of its own, as Lambda runs one invocation per shard at a
    time: a shard waiting on Kinesis does not hold up another one's batch. The handler, the
    Kinesis client and the state are shared, and thread-safe."""

    def __init__(
        self,
        client: Any,
        stream: StreamInfo,
        handler: Handler,
        state: LocalState,
        settings: ConsumerSettings,
        region: str,
        dead_letter: str | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.handler = handler
        self.state = state
        self.settings = settings
        self.region = region
        self.dead_letter = dead_letter
        self.progress = Progress()
        self.shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()  # over progress
        self._resharded = threading.Event()  # a shard ended: look for its children
        self._failure: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; batches in the handler's hands are finished first.
        An error in a shard's thread stops the others and is raised here."""
        workers: dict[str, threading.Thread] = {}
        refreshed = -float("inf")
        try:
            while not stop.is_set():
                due = time.monotonic() - refreshed > self.settings.shard_refresh_seconds
                if due or self._resharded.is_set():
                    self._resharded.clear()
                    self._refresh_shards()
                    refreshed = time.monotonic()
                for shard in self._readable():
                    if shard.shard_id not in workers:
                        worker = threading.Thread(
                            target=self._consume_shard, args=(shard, stop), daemon=True
                        )
                        workers[shard.shard_id] = worker
                        worker.start()
                stop.wait(self.settings.poll_seconds)
        finally:
            stop.set()
            for worker in workers.values():
                worker.join()
        if self._failure is not None:
            raise self._failure

    def _consume_shard(self, shard: _Shard, stop: threading.Event) -> None:
        try:
            shard.iterator = self._iterator(shard)
            while not stop.is_set():
                records = self._fetch(shard)
                if records and not self._deliver(shard, records, stop):
                    return
                if shard.iterator is None:  # closed, and read to its end
                    self._end(shard)
                    return
                if not records:
                    stop.wait(self.settings.poll_seconds)
        except BaseException as exc:
            self._failure = exc
            stop.set()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.progress, name, getattr(self.progress, name) + delta)

    def _refresh_shards(self) -> None:
        checkpoints = self.state.checkpoints(self.stream)
        for shard in kinesis.list_shards(self.client, self.stream.name):
            shard_id = shard["ShardId"]
            if shard_id in self.shards:
                continue
            parents = tuple(
                p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
            )
            self.shards[shard_id] = _Shard(
                shard_id, parents, ended=checkpoints.get(shard_id) == SHARD_END
            )

    def _readable(self) -> list[_Shard]:
        """Open shards whose parents (if still listed) are read to the end."""
        return [
            s
            for s in self.shards.values()
            if not s.ended and all(p not in self.shards or self.shards[p].ended for p in s.parents)
        ]

    def _end(self, shard: _Shard) -> None:
        shard.ended = True
        self.state.checkpoint(self.stream, shard.shard_id, SHARD_END, time.time())
        log.info("shard %s is closed and read to its end", shard.shard_id)
        self._resharded.set()  # its children are readable now

    def _fetch(self, shard: _Shard) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_records(
                ShardIterator=shard.iterator, Limit=self.settings.batch_size
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ExpiredIteratorException":  # iterators live 5 minutes
                shard.iterator = self._iterator(shard)
                return []
            if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                return []  # read again on the next round
            raise
        shard.iterator = answer.get("NextShardIterator")
        self.progress.lag_millis = int(answer.get("MillisBehindLatest", 0))
        return list(answer["Records"])

    def _iterator(self, shard: _Shard) -> str:
        checkpoint = self.state.checkpoints(self.stream).get(shard.shard_id)
        where: dict[str, str]
        if checkpoint:
            where = {
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": checkpoint,
            }
        elif shard.parents:  # a child shard is read whole, after its parents
            where = {"ShardIteratorType": "TRIM_HORIZON"}
        else:
            where = {"ShardIteratorType": self.settings.starting_position}
        answer = self.client.get_shard_iterator(
            StreamName=self.stream.name, ShardId=shard.shard_id, **where
        )
        return str(answer["ShardIterator"])

    def _deliver(self, shard: _Shard, records: list[dict[str, Any]], stop: threading.Event) -> bool:
        """Hand ``records`` to the handler until each is written or given up; False when
        ``stop`` came first (the rest is redelivered on the next start)."""
        pending = [records]
        while pending:
            batch = pending.pop(0)
            attempt = 0
            while batch:
                if stop.is_set():
                    return False
                attempt += 1
                failed, error = self._invoke(shard, batch)
                if error is not None and self.settings.bisect_on_error and len(batch) > 1:
                    middle = len(batch) // 2
                    pending[:0] = [batch[:middle], batch[middle:]]
                    self._count(bisections=1)
                    break
                if not failed:
                    self._checkpoint(shard, batch[-1])
                    break
                first = _first_failed(batch, failed)
                if first > 0:  # everything before the lowest failure is done
                    self._checkpoint(shard, batch[first - 1])
                    batch = batch[first:]
                if attempt > self.settings.max_retries or self._too_old(batch[0]):
                    self._give_up(shard, batch, failed, attempt, error)
                    self._checkpoint(shard, batch[-1])
                    break
                self._count(retries=1)
                stop.wait(min(0.1 * 2**attempt, 5.0))
        self._count(records=len(records))
        return True

    def _invoke(
        self, shard: _Shard, batch: Sequence[dict[str, Any]]
    ) -> tuple[set[str], str | None]:
        """One handler call: the failed sequence numbers, and the error if it raised."""
        event = kinesis_event(batch, shard.shard_id, self.stream.arn, self.region)
        context = InvocationContext(self.settings.invocation_seconds)
        try:
            failed = set(failed_sequence_numbers(self.handler(event, context)))
        except UserError:
            raise  # misconfiguration (a stream missing): retrying will not help
        except Exception as exc:  # a function error, as Lambda sees it: retried or bisected
            log.exception("the handler failed on %d record(s) of %s", len(batch), shard.shard_id)
            return {r["SequenceNumber"] for r in batch}, f"{type(exc).__name__}: {exc}"
        self._count(batches=1)
        return failed, None

    def _checkpoint(self, shard: _Shard, record: Mapping[str, Any]) -> None:
        self.state.checkpoint(self.stream, shard.shard_id, record["SequenceNumber"], time.time())

    def _too_old(self, record: Mapping[str, Any]) -> bool:
        arrived = epoch_seconds(record["ApproximateArrivalTimestamp"])
        return time.time() - arrived > self.settings.max_record_age_seconds

    def _give_up(
        self,
        shard: _Shard,
        batch: Sequence[dict[str, Any]],
        failed: set[str],
        attempts: int,
        error: str | None,
    ) -> None:
        """The OnFailure destination: the records that never succeeded, with the reason."""
        lost = [r for r in batch if r["SequenceNumber"] in failed] or list(batch)
        reason = f"not processed after {attempts} attempt(s)" + (f": {error}" if error else "")
        self._count(given_up=len(lost))
        if self.dead_letter is None:
            log.error(
                "%d record(s) of %s dropped (no dead-letter stream): %s",
                len(lost),
                shard.shard_id,
                reason,
            )
            return
        now = time.time()
        entries = [
            (
                dead_letter_record(
                    Item(
                        sequence_number=r["SequenceNumber"],
                        shard_id=shard.shard_id,
                        partition_key=r["PartitionKey"],
                        data=r["Data"],
                        key=position_key(shard.shard_id, r["SequenceNumber"]),
                        reason=reason,
                    ),
                    now,
                ),
                r["PartitionKey"],
            )
            for r in lost
        ]
        errors = [e for e in kinesis.put_records(self.client, self.dead_letter, entries) if e]
        if errors:
            raise StreamError(
                f"cannot write to the dead-letter stream {self.dead_letter}: {errors[0]}"
            )
        log.error(
            "%d record(s) of %s sent to %s: %s", len(lost), shard.shard_id, self.dead_letter, reason
        )


def _first_failed(batch: Sequence[Mapping[str, Any]], failed: set[str]) -> int:
    """The position of the lowest failed record; 0 when a failure names no record of the
    batch (Lambda then retries the whole batch)."""
    positions = [i for i, r in enumerate(batch) if r["SequenceNumber"] in failed]
    if len(positions) < len(failed):
        return 0
    return positions[0]
