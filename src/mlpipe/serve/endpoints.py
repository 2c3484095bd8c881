"""POST /predict and POST /invocations as plain ASGI: the hot path, without a framework.

Routing, a Request object and dependency resolution cost more than parsing, validating and
predicting a row (see benchmarks/serve.py), so these two routes are answered here and every
other route goes to FastAPI. The OpenAPI document still describes them (``app.py``). Each
request reads ``slot.current`` once, so it is answered by exactly one model version.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mlpipe.contract import InputError, Problem
from mlpipe.predictor import LoadedModel
from mlpipe.serve import protocol
from mlpipe.serve.config import ServeConfig
from mlpipe.serve.metrics import Metrics
from mlpipe.serve.monitor import DriftWatch
from mlpipe.serve.slot import ModelSlot

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PATHS = ("/predict", "/invocations")

# A body over the limit is read and thrown away before the 413 goes out, so that a client still
# sending it (urllib, requests, most SDKs send the whole body before reading) reads the answer
# instead of a connection reset; nginx's lingering close does the same. Past these bounds the
# server answers and closes. A client that asks with `Expect: 100-continue` (curl) gets the 413
# at once and sends nothing.
DISCARD_BYTES = 128 * 2**20
DISCARD_SECONDS = 30.0  # nginx's lingering_time


class Unauthorized(Exception):
    """Missing or wrong bearer token."""


class Unavailable(Exception):
    """No model is loaded yet."""


class Disconnected(Exception):
    """The client went away before sending the whole body."""


class TooLarge(InputError):
    """The body is over the limit; ``close`` when the rest of it was not read."""

    def __init__(self, size: int, limit: int, close: bool) -> None:
        super().__init__(
            [
                Problem(
                    f"the body has {size} bytes or more; at most {limit} are accepted "
                    "(--max-body-bytes)"
                )
            ],
            status=413,
        )
        self.close = close


class Predictions:
    """The ASGI app of the two prediction routes."""

    def __init__(
        self, slot: ModelSlot, config: ServeConfig, metrics: Metrics, watch: DriftWatch
    ) -> None:
        self.slot = slot
        self.metrics = metrics
        self.watch = watch
        self.max_body_bytes = config.max_body_bytes
        self.max_rows = config.max_rows
        self.expected_auth = (
            b"Bearer " + config.token.get_secret_value().encode() if config.token else None
        )
        self.routes = {
            "/predict": (protocol.predict_matrix, render_predict, predict_error),
            "/invocations": (protocol.invocations_matrix, render_invocations, mlflow_error),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parse, render, error_body = self.routes[scope["path"]]
        headers = dict(scope["headers"])
        extra: list[tuple[bytes, bytes]] = []
        try:
            model = self._model(headers)
            scope.setdefault("state", {})["model_version"] = model.version
            body = await self._body(receive, headers)
            content_type = headers.get(b"content-type")
            matrix = parse(
                body, content_type.decode("latin-1") if content_type else None, model.contract,
                self.max_rows,
            )  # fmt: skip
            self.metrics.count_inputs(model.contract, matrix)
            if model.classes is None:
                predictions = model.predict(matrix)
                self.watch.observe(model, matrix, predictions)
                status, payload = 200, render(model, predictions)
            else:
                predictions, codes, proba = model.classify(matrix)
                self.watch.observe(model, matrix, codes, proba)
                status, payload = 200, render(model, predictions, codes, proba)
            self.metrics.predictions.labels(model.version or "local", model.predictor.kind).inc(
                len(predictions)
            )
        except InputError as exc:
            status, payload = exc.status, json.dumps(error_body(exc)).encode()
            if isinstance(exc, TooLarge) and exc.close:
                extra.append((b"connection", b"close"))
        except Unauthorized:
            status, payload = 401, _error(401, "missing or wrong bearer token")
            extra.append((b"www-authenticate", b"Bearer"))
        except Unavailable:
            status, payload = 503, _error(503, self.slot.last_error or "the model is still loading")
            extra.append((b"retry-after", b"1"))
        except Disconnected:
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _model(self, headers: dict[bytes, bytes]) -> LoadedModel:
        if self.expected_auth is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected_auth
        ):
            raise Unauthorized
        model = self.slot.current
        if model is None:
            raise Unavailable
        return model

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        """The body; over the limit, a 413 (``TooLarge``) once the rest is thrown away."""
        limit = self.max_body_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            size = int(declared)
            waiting = headers.get(b"expect", b"").lower() == b"100-continue"
            if waiting or size > DISCARD_BYTES:  # not sent yet (no 100 Continue), or too much
                raise TooLarge(size, limit, close=True)
            raise TooLarge(size, limit, close=not await _discard(receive, 0))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                drained = not more or await _discard(receive, size)
                raise TooLarge(size, limit, close=not drained)
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)


async def _discard(receive: Receive, size: int) -> bool:
    """Read the rest of a body and drop it, a chunk at a time (the server reads the socket only
    as fast as this takes, so memory stays flat). True if it ended within the bounds."""
    try:
        async with asyncio.timeout(DISCARD_SECONDS):
            while size <= DISCARD_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    return True
    except TimeoutError:
        pass
    return False


def _error(status: int, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "message": message}}).encode()


def render_predict(
    model: LoadedModel, predictions: Any, codes: Any = None, proba: Any = None
) -> bytes:
    """mlpipe's answer: the predictions (a classifier's as its labels, with each row's class
    probabilities by label) and the model that made them."""
    body: dict[str, Any] = {"predictions": predictions.tolist()}
    if model.classes is not None:
        names = model.class_names
        body["predictions"] = model.classes[codes].tolist()
        body["probabilities"] = [dict(zip(names, row, strict=True)) for row in proba.tolist()]
    body["model"] = {"name": model.ref.name, "version": model.version, "alias": model.ref.alias}
    return json.dumps(body).encode()


def render_invocations(
    model: LoadedModel, predictions: Any, codes: Any = None, proba: Any = None
) -> bytes:
    """MLflow's answer: what ``mlflow.pyfunc``'s predict answers, byte for byte."""
    return protocol.render_predictions(predictions)


def predict_error(exc: InputError) -> dict[str, Any]:
    return {
        "error": {
            "status": exc.status,
            "message": str(exc),
            "problems": [p.to_dict() for p in exc.problems],
        }
    }


def mlflow_error(exc: InputError) -> dict[str, Any]:
    """MLflow's error body (``error_code``, ``message``), plus the problems one by one."""
    code = {413: "RESOURCE_LIMIT_EXCEEDED", 415: "INVALID_PARAMETER_VALUE"}
    return {
        "error_code": code.get(exc.status, "BAD_REQUEST"),
        "message": str(exc),
        "problems": [p.to_dict() for p in exc.problems],
    }
