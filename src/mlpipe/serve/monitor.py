"""Drift of the served traffic: the last N rows (and their predictions) against the served
version's training profile, as Prometheus gauges and, when a threshold is first crossed, a
``mlpipe.drift.detected`` event.

A request only appends its matrix to a short queue (no work on the hot path); the rows are binned
when the window is evaluated: on every ``/metrics`` scrape and every ``drift_seconds`` in the
background, where the event is sent (once per crossing: the flag must clear before it is sent
again). A new model version starts a new window. Versions logged without a profile are not
monitored.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from mlpipe.drift import DriftResult, Window, compare
from mlpipe.predictor import LoadedModel
from mlpipe.serve.metrics import Metrics

log = logging.getLogger("mlpipe.serve")
Emit = Callable[[LoadedModel, DriftResult], None]


class DriftWatch:
    """The sliding window of one server process."""

    def __init__(self, metrics: Metrics, window_rows: int | None = None) -> None:
        self.metrics = metrics
        self.window_rows = window_rows  # None: the profile's (the spec's monitoring.window)
        self.model: LoadedModel | None = None
        self.window: Window | None = None
        self.queue: deque[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = deque()
        self.queued = 0
        self.flagged = False

    def observe(
        self,
        model: LoadedModel,
        matrix: np.ndarray,
        predictions: np.ndarray,
        proba: np.ndarray | None = None,
    ) -> None:
        """Called per request: remember the rows (and a classifier's probabilities), bin them
        later."""
        if model.profile is None:
            return
        if model is not self.model:
            self.model = model
            size = self.window_rows or model.profile.thresholds.window
            self.window = Window(model.profile, size)
            self.queue.clear()
            self.queued, self.flagged = 0, False
        assert self.window is not None
        self.queue.append((matrix, predictions, proba))
        self.queued += len(matrix)
        while self.queued - len(self.queue[0][0]) >= self.window.size:  # older than the window
            self.queued -= len(self.queue.popleft()[0])

    def evaluate(self) -> DriftResult | None:
        """Bin what was queued, compare the window with the profile, update the gauges."""
        if self.window is None:
            return None
        if self.queue:
            # one binning of all queued rows: request by request, a full window of single rows
            # took ~400 ms on the event loop here, every check, as the serve benchmark's p99
            matrices, predictions, probas = zip(*self.queue, strict=True)
            self.queue.clear()
            proba = None if probas[0] is None else np.concatenate(probas)
            self.window.add(np.concatenate(matrices), np.concatenate(predictions), proba)
        self.queued = 0
        result = compare(self.window)
        for column in result.columns:
            self.metrics.drift_psi.labels(column.name).set(column.psi)
            self.metrics.drift_ks.labels(column.name).set(column.ks)
        self.metrics.drift_rows.set(result.rows)
        self.metrics.drift_detected.set(int(result.drifted))
        return result

    def check(self, emit: Emit | None) -> DriftResult | None:
        """Evaluate, and call ``emit`` when the window has just crossed a threshold."""
        result = self.evaluate()
        if result is None or self.model is None:
            return result
        if result.drifted and not self.flagged and emit is not None:
            log.warning("drift in the served traffic: %s", result.summary())
            emit(self.model, result)
        self.flagged = result.drifted
        return result
