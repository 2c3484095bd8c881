"""The model being served, and the loop that follows a registry alias.

``ModelSlot.current`` is one reference. A request reads it once and validates, predicts and
answers with that object, so a swap (a single assignment) can never mix two versions inside a
request, and no request waits for a load. A new version is loaded, checked and warmed up in a
worker thread first; one that fails keeps the old version serving and is not retried until the
alias moves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mlpipe.errors import MlpipeError
from mlpipe.predictor import LoadedModel, ModelRef, load_model, resolve_version
from mlpipe.serve.metrics import Metrics

log = logging.getLogger("mlpipe.serve")

Loader = Callable[[ModelRef], LoadedModel]


class ModelSlot:
    """Holds the served model; swapped atomically."""

    def __init__(self, ref: ModelRef, metrics: Metrics) -> None:
        self.ref = ref
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self.failed: dict[str, str] = {}  # version -> why it was refused
        self.last_error: str | None = None

    def install(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next request on; the only place ``current`` changes."""
        old = self.current
        if old is not None:
            problem = incompatibility(old, model)
            if problem:
                self._refuse(model.version or "", "incompatible", problem)
                return
        self.current = model
        event = "swapped" if old is not None else "loaded"
        self.metrics.model_events.labels(event, model.version or "local").inc()
        if old is not None:
            self.metrics.model_info.labels(
                old.ref.name or "", old.version or "local", old.predictor.kind
            ).set(0)
        self.metrics.model_info.labels(
            model.ref.name or "", model.version or "local", model.predictor.kind
        ).set(1)
        log.info(
            "serving %s version %s (%s predictor)%s",
            model.ref.name or model.ref.uri,
            model.version or "local",
            model.predictor.kind,
            f", replacing version {old.version}" if old else "",
        )

    def _refuse(self, version: str, event: str, why: str) -> None:
        self.failed[version] = why
        self.last_error = f"version {version}: {why}"
        self.metrics.model_events.labels(event, version).inc()
        log.error("model %s version %s not served (%s): %s", self.ref.uri, version, event, why)

    async def refresh(self, client: Any, loader: Loader) -> None:
        """Load the version the reference points at, if it is new and has not failed before."""
        if self.ref.name is None or (self.ref.version is not None and self.current is not None):
            return  # a local folder or a fixed version never changes
        try:
            version = await asyncio.to_thread(resolve_version, self.ref, client)
        except MlpipeError as exc:
            self.last_error = str(exc)
            log.warning("registry poll failed: %s", exc)
            return
        if self.current is not None and version == self.current.version:
            return
        if version in self.failed:
            return
        log.info("loading %s version %s", self.ref.uri, version)
        try:
            model = await asyncio.to_thread(loader, self.ref.pinned(version))
        except MlpipeError as exc:
            self._refuse(version, "load_failed", str(exc))
            return
        except Exception as exc:  # a broken artifact can fail deep inside MLflow or onnxruntime
            log.exception("loading version %s failed", version)
            self._refuse(version, "load_failed", f"{type(exc).__name__}: {exc}")
            return
        self.install(model)

    async def load_local(self, loader: Loader) -> None:
        """Load a local model folder once."""
        try:
            self.install(await asyncio.to_thread(loader, self.ref))
        except MlpipeError as exc:
            self._refuse("local", "load_failed", str(exc))


def incompatibility(old: LoadedModel, new: LoadedModel) -> str | None:
    """Why ``new`` cannot replace ``old`` for the same clients, or None. The features must be
    the same; their numeric types may differ (versions registered before mlpipe kept the table's
    integer columns declare every column double: the clients' rows fit both)."""
    if old.contract.names == new.contract.names:
        return None
    return (
        f"its inputs {list(new.contract.names)} ({', '.join(new.contract.types)}) differ from "
        f"the served version's {list(old.contract.names)} ({', '.join(old.contract.types)})"
    )


async def follow(
    slot: ModelSlot, client: Any, loader: Loader, poll_seconds: float, stop: asyncio.Event
) -> None:
    """Load the model, then poll the registry every ``poll_seconds`` until ``stop`` is set."""
    while not stop.is_set():
        if slot.ref.path is not None:
            if slot.current is None and "local" not in slot.failed:
                await slot.load_local(loader)
        else:
            await slot.refresh(client, loader)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_seconds)


def default_loader(allow_pickle: bool, onnx: bool) -> Loader:
    def load(ref: ModelRef) -> LoadedModel:
        return load_model(ref, allow_pickle=allow_pickle, fast=onnx)

    return load
