"""The stream handler: a Kinesis event in; predictions, dead letters and a partial-failure
report out. The Lambda function and the local consumer both call it.

For one event it:

1. decodes each record (``events.decode``): a record that is not a JSON object of features with a
   valid ``id`` is poison;
2. claims every record's key in the idempotency ledger; keys written before are skipped, keys
   another invocation holds are reported for retry, and keys whose writer died are looked up on
   the output streams first (``recover``), so none is written twice;
3. checks the features with the model's input contract (the online API's rules): a record that
   breaks it is poison too;
4. scores every valid record in one predictor call and puts the predictions on the output
   stream, and the poison records with their reason on the dead-letter stream;
5. marks what was written as completed, releases what was not, and answers Lambda's
   ``{"batchItemFailures": [...]}`` naming only the records that may succeed on a retry (a put
   that failed, a key that is busy): poison never blocks a shard.

An exception (the model or the ledger failing) releases the claims and propagates: for Lambda it
is a function error, which the event source mapping retries and bisects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpipe.contract import InputError
from mlpipe.errors import UserError
from mlpipe.predictor import LoadedModel
from mlpipe.stream import kinesis
from mlpipe.stream.events import (
    ID_FIELD,
    Item,
    dead_letter_record,
    decode,
    failures_response,
    prediction_record,
)
from mlpipe.stream.ledger import Ledger

log = logging.getLogger("mlpipe.stream")

DEFAULT_LEASE_SECONDS = 900.0  # Lambda's longest timeout, when no context says otherwise
RECOVERY_SKEW_SECONDS = 60.0  # read the output from this long before a dead writer's claim


@dataclass
class Totals:
    """What a handler did since it was made (the consumer prints these)."""

    scored: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    retried: int = 0
    recovered: int = 0

    def add(self, other: Totals) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class StreamHandler:
    """Scores Kinesis events with ``model``; the clients and the ledger are passed in."""

    model: LoadedModel
    kinesis: Any
    output: str
    ledger: Ledger
    dead_letter: str | None = None
    clock: Callable[[], float] = time.time
    totals: Totals = field(default_factory=Totals)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if ID_FIELD in self.model.contract.names:
            raise UserError(
                f"the model has a feature named {ID_FIELD!r}, which stream records use for "
                "their id; rename the feature to stream with it"
            )

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        items, matrix = self._check([decode(record) for record in event.get("Records", [])])
        now = self.clock()
        firsts: dict[str, int] = {}
        for index, item in enumerate(items):
            firsts.setdefault(item.key, index)
        claims = self.ledger.claim(list(firsts), now, now + _lease_seconds(context))
        mine = [*claims.new, *claims.stale]
        try:
            written = (
                recover(self.kinesis, self._streams(), claims.stale) if claims.stale else set()
            )
            todo = [firsts[key] for key in mine if key not in written]
            done, failed, totals = self._write([items[i] for i in todo], matrix[todo])
            self.ledger.complete([*written, *done], self.clock())
            self.ledger.release(failed)
        except BaseException:
            self.ledger.release(mine)
            raise
        retry = set(failed) | claims.busy
        totals.retried = sum(item.key in retry for item in items)
        totals.duplicates = len(items) - len(todo) + len(failed) - totals.retried
        totals.recovered = len(written)
        with self._lock:
            self.totals.add(totals)
        return failures_response([item.sequence_number for item in items if item.key in retry])

    def _streams(self) -> list[str]:
        return [s for s in (self.output, self.dead_letter) if s]

    def _check(self, items: list[Item]) -> tuple[list[Item], np.ndarray]:
        """Check every record against the model's contract: the items (poison ones with their
        reason) and a feature matrix with one row per item (zeros for poison)."""
        contract = self.model.contract
        matrix = np.zeros((len(items), len(contract.names)))
        valid = [i for i, item in enumerate(items) if item.features is not None]
        try:  # the common case: the whole batch passes in one check
            matrix[valid] = contract.matrix_from_records([items[i].features for i in valid])
            return items, matrix
        except InputError:
            pass
        for i in valid:
            try:
                matrix[i] = contract.matrix_from_records([items[i].features])
            except InputError as exc:
                items[i] = items[i].as_poison(_reason(exc))
        return items, matrix

    def _write(
        self, items: Sequence[Item], matrix: np.ndarray
    ) -> tuple[list[str], list[str], Totals]:
        """Score and put ``items`` (``matrix`` holds their features): the keys written, the
        keys that failed, and the counts."""
        at = self.clock()
        totals = Totals()
        done: list[str] = []
        failed: list[str] = []
        scored = [i for i, item in enumerate(items) if item.reason is None]
        poison = [item for item in items if item.reason is not None]
        if scored:
            name, version = self.model.ref.name, self.model.version
            valid = [items[i] for i in scored]
            classes = self.model.classes
            if classes is None:
                values = [float(p) for p in self.model.predict(matrix[scored])]
                probabilities: list[Any] = [None] * len(valid)
            else:  # the label by name, as /predict answers it, and each class's probability
                _, codes, proba = self.model.classify(matrix[scored])
                values = classes[codes].tolist()
                names = self.model.class_names
                probabilities = [dict(zip(names, row, strict=True)) for row in proba.tolist()]
            entries = [
                (prediction_record(item, p, name, version, at, chances), item.partition_key)
                for item, p, chances in zip(valid, values, probabilities, strict=True)
            ]
            errors = kinesis.put_records(self.kinesis, self.output, entries)
            _sort(valid, errors, done, failed)
            totals.scored = errors.count(None)
            _log_inputs(self.model.contract, matrix[scored])
        if poison:
            for item in poison:
                log.warning("record %s is poison: %s", item.key, item.reason)
            if self.dead_letter is None:  # nowhere to keep it: logged above, not retried
                errors = [None] * len(poison)
            else:
                entries = [(dead_letter_record(item, at), item.partition_key) for item in poison]
                errors = kinesis.put_records(self.kinesis, self.dead_letter, entries)
            _sort(poison, errors, done, failed)
            totals.dead_lettered = errors.count(None)
        return done, failed, totals


def _sort(items: Sequence[Item], errors: Sequence[str | None], done: list, failed: list) -> None:
    """Split ``items`` by their put's outcome; a failed put is logged once per call."""
    for item, error in zip(items, errors, strict=True):
        (failed if error else done).append(item.key)
    first = next((e for e in errors if e), None)
    if first:
        count = sum(1 for e in errors if e)
        log.warning("%d record(s) not written, to be retried: %s", count, first)


def _log_inputs(contract: Any, matrix: np.ndarray) -> None:
    """Log what a batch's scored records held that training had not (categories never seen,
    missing values): scored by the family's rule, and counted where an operator looks."""
    unseen, missing = contract.unseen(matrix), contract.missing(matrix)
    if unseen or missing:
        log.info(
            "scored %d records: unseen categories %s; missing values %s",
            len(matrix), unseen or "none", missing or "none",
        )  # fmt: skip


def _reason(error: InputError) -> str:
    return "; ".join(
        f"field {p.field!r}: {p.message}" if p.field else p.message for p in error.problems
    )


def _lease_seconds(context: Any) -> float:
    """How long this invocation may run: a claim older than that has a dead writer."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else DEFAULT_LEASE_SECONDS


def recover(client: Any, streams: Sequence[str], stale: Mapping[str, float]) -> set[str]:
    """The keys of ``stale`` that a dead writer did put: read ``streams`` from just before the
    oldest claim and collect the ``key`` of each record."""
    since = min(stale.values()) - RECOVERY_SKEW_SECONDS
    found: set[str] = set()
    for stream in streams:
        for record in kinesis.read(client, stream, since=since):
            try:
                key = json.loads(record["Data"]).get("key")
            except (ValueError, AttributeError):
                continue
            if key in stale:
                found.add(key)
    log.warning(
        "%d record(s) were claimed by a writer that stopped; %d of them were on the output "
        "already and are not written again",
        len(stale),
        len(found),
    )
    return found
