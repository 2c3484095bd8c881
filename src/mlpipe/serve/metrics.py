"""Prometheus metrics of the prediction server.

With several worker processes, prometheus-client's multiprocess mode is on
(``PROMETHEUS_MULTIPROC_DIR``, set by ``server.py`` before the workers start), so ``/metrics``
on any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Predictions take tens of microseconds; the low buckets are where this server lives.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The server's metrics, on a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlpipe_http_requests",
            "HTTP requests by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlpipe_http_request_duration_seconds",
            "Time from request to response, by endpoint and status.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "mlpipe_predictions",
            "Rows predicted, by model version and predictor (onnx or native).",
            ["model_version", "predictor"],
            registry=self.registry,
        )
        # a model of a table with categories: what its inputs held that training had not
        self.unseen = Counter(
            "mlpipe_unseen_categories",
            "Values of a categorical feature never seen in training (scored by the family's "
            "rule), by feature.",
            ["feature"],
            registry=self.registry,
        )
        self.missing = Counter(
            "mlpipe_missing_values",
            "Missing values in the features that may be missing, by feature.",
            ["feature"],
            registry=self.registry,
        )
        self.model_events = Counter(
            "mlpipe_model_events",
            "Model lifecycle: loaded, swapped, load_failed, incompatible.",
            ["event", "model_version"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "mlpipe_model_info",
            "1 for the model version being served.",
            ["model_name", "model_version", "predictor"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )

        # Drift of the last N rows from the training profile (``monitor.py``); with several
        # workers each has its own window and the exposition shows the largest figure.
        self.drift_psi = Gauge(
            "mlpipe_drift_psi",
            "Population stability index of the serving window vs the training data, by column.",
            ["column"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.drift_ks = Gauge(
            "mlpipe_drift_ks",
            "Kolmogorov-Smirnov distance (binned) of the serving window vs the training data.",
            ["column"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.drift_rows = Gauge(
            "mlpipe_drift_window_rows",
            "Rows in the drift window.",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.drift_detected = Gauge(
            "mlpipe_drift_detected",
            "1 while a column of the window is past its drift threshold.",
            registry=self.registry,
            multiprocess_mode="max",
        )

    def count_inputs(self, contract: Any, matrix: np.ndarray) -> None:
        """Count the unseen categories and missing values of a request's rows (nothing to do
        for a model of numbers alone)."""
        if contract.categories:
            for feature, count in contract.unseen(matrix).items():
                self.unseen.labels(feature).inc(count)
        if contract.optional:
            for feature, count in contract.missing(matrix).items():
                self.missing.labels(feature).inc(count)

    def render(self) -> bytes:
        """The exposition text, summed over worker processes in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
