"""The prediction API over one ``ModelSlot``: operations routes in FastAPI, the prediction
routes in plain ASGI (``endpoints.py``), and one ASGI wrapper (``Observe``) in front of both for
metrics and the access log.

The prediction routes parse the raw body (``protocol.py``) instead of a pydantic body model: the
input contract comes from the model's signature, known only at run time and changed by the
alias. The OpenAPI document describes them with the served model's features.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline

from mlpipe.predictor import LoadedModel, ModelRef
from mlpipe.serve import protocol
from mlpipe.serve.config import ServeConfig
from mlpipe.serve.endpoints import PATHS, Predictions, Receive, Scope, Send
from mlpipe.serve.metrics import CONTENT_TYPE, Metrics
from mlpipe.serve.monitor import DriftWatch, Emit
from mlpipe.serve.slot import Loader, ModelSlot, follow

log = logging.getLogger("mlpipe.serve")
access_log = logging.getLogger("mlpipe.access")

# Set by the server on SIGTERM (signals are per process): /ready answers 503 from then on.
SHUTTING_DOWN = threading.Event()

ROUTES = (
    "/predict",
    "/invocations",
    "/health",
    "/ping",
    "/version",
    "/ready",
    "/model",
    "/metrics",
)


def create_app(
    config: ServeConfig,
    ref: ModelRef,
    loader: Loader,
    client: Any,
    metrics: Metrics | None = None,
    on_startup: Callable[[], None] | None = None,
    emit: Emit | None = None,
) -> FastAPI:
    """The ASGI app; the model loads in the background once the app starts. ``emit`` sends
    ``mlpipe.drift.detected`` when the traffic first drifts (``monitor.py``)."""
    metrics = metrics or Metrics()
    slot = ModelSlot(ref, metrics)
    watch = DriftWatch(metrics, config.drift_window)

    async def watch_drift(stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=config.drift_seconds)
            watch.check(emit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(follow(slot, client, loader, config.poll_seconds, stop)),
            asyncio.create_task(watch_drift(stop)),
        ]
        yield
        stop.set()
        await asyncio.gather(*tasks)

    # /docs and /redoc with Swagger UI's and ReDoc's assets served from the package (under
    # /static-offline-docs): the pages work air-gapped, where FastAPI's own load from a CDN
    app = FastAPIOffline(
        title="mlpipe prediction API",
        summary=f"Predictions from {ref.uri}",
        version=_version("mlpipe"),
        lifespan=lifespan,
    )
    app.state.slot = slot
    app.state.metrics = metrics

    @app.get("/health", tags=["operations"])
    @app.get("/ping", tags=["operations"], include_in_schema=False)
    async def health() -> dict[str, str]:
        """The process is alive (it may still be loading the model)."""
        return {"status": "ok"}

    # the serving image has MLflow's client package, mlflow-skinny, of the same version
    mlflow_version = next((v for v in map(_version, ("mlflow", "mlflow-skinny")) if v != "0"), "0")

    @app.get("/version", tags=["operations"], response_class=PlainTextResponse)
    async def version() -> PlainTextResponse:
        """The MLflow version whose scoring protocol this server speaks, as `mlflow models
        serve` answers it (MLflow's scoring-server client reads it); the model's version is in
        /model."""
        return PlainTextResponse(mlflow_version)

    @app.get("/ready", tags=["operations"])
    async def ready() -> JSONResponse:
        """200 once a model is loaded and warmed up; 503 before, and from SIGTERM on."""
        if SHUTTING_DOWN.is_set():
            return JSONResponse({"ready": False, "reason": "shutting down"}, status_code=503)
        if slot.current is None:
            reason = slot.last_error or "loading the model"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return JSONResponse({"ready": True, "model_version": slot.current.version})

    @app.get("/model", tags=["operations"])
    async def model() -> JSONResponse:
        """The served model: name, version, alias, run id, signature, predictor and why."""
        current = slot.current
        if current is None:
            return JSONResponse(
                {"error": {"status": 503, "message": slot.last_error or "loading the model"}},
                status_code=503,
            )
        return JSONResponse(
            current.describe()
            | {
                "following_alias": slot.ref.follows_alias,
                "poll_seconds": config.poll_seconds if slot.ref.follows_alias else None,
                "refused_versions": slot.failed,
            }
        )

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus metrics (the drift window is evaluated first)."""
        watch.evaluate()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        # Regenerated per model version, so the documented features are the served ones.
        current = slot.current
        key = current.version if current else None
        cached = app.state.__dict__.get("openapi_cache")
        if cached and cached[0] == key:
            return dict(cached[1])
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            _request_schemas(current)
        )
        schema["paths"].update(_prediction_paths())
        if config.token is not None:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            for path in ("/predict", "/invocations"):
                schema["paths"][path]["post"]["security"] = [{"bearer": []}]
        app.state.openapi_cache = (key, schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    predictions = Predictions(slot, config, metrics, watch)
    return Observe(app, predictions, metrics, config.access_log)  # type: ignore[return-value]


def _prediction_paths() -> dict[str, Any]:
    def operation(name: str, summary: str, content: dict[str, Any]) -> dict[str, Any]:
        answer = {
            "description": "predictions",
            "content": {protocol.JSON_TYPE: {"schema": {"type": "object"}}},
        }
        errors = {
            str(code): {"description": why}
            for code, why in [
                (400, "unreadable body"),
                (401, "missing or wrong bearer token"),
                (413, "body or batch over the limit"),
                (415, "unsupported Content-Type"),
                (422, "breaks the model's input contract"),
                (503, "no model loaded yet"),
            ]
        }
        return {
            "post": {
                "tags": ["predict"],
                "summary": summary,
                "operationId": name,
                "requestBody": {"required": True, "content": content},
                "responses": {"200": answer, **errors},
            }
        }

    def ref(name: str) -> dict[str, Any]:
        return {"schema": {"$ref": f"#/components/schemas/{name}"}}

    return {
        "/predict": operation(
            "predict",
            'Predict: {"instances": [{feature: number, ...}]}, a list of records, or one record',
            {protocol.JSON_TYPE: ref("PredictRequest")},
        ),
        "/invocations": operation(
            "invocations",
            "MLflow's scoring protocol: dataframe_split, dataframe_records, instances or "
            "inputs as JSON, or a CSV or Parquet body",
            {
                protocol.JSON_TYPE: ref("InvocationsRequest"),
                protocol.CSV_TYPE: {"schema": {"type": "string"}},
            },
        ),
    }


def _request_schemas(model: LoadedModel | None) -> dict[str, Any]:
    if model is None:
        record: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "number"}}
    else:
        record = {
            "type": "object",
            "properties": {name: {"type": "number"} for name in model.contract.names},
            "required": list(model.contract.names),
            "additionalProperties": False,
        }
    records = {"type": "array", "items": {"$ref": "#/components/schemas/Record"}, "minItems": 1}
    return {
        "Record": record,
        "PredictRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"instances": records},
                    "required": ["instances"],
                    "additionalProperties": False,
                },
                records,
                {"$ref": "#/components/schemas/Record"},
            ]
        },
        "InvocationsRequest": {
            "type": "object",
            "properties": {
                "dataframe_split": {
                    "type": "object",
                    "properties": {
                        "columns": {"type": "array", "items": {"type": "string"}},
                        "data": {"type": "array", "items": {"type": "array"}},
                    },
                    "required": ["columns", "data"],
                },
                "dataframe_records": records,
                "instances": records,
                "inputs": records,
            },
            "minProperties": 1,
            "maxProperties": 1,
        },
    }


class Observe:
    """ASGI middleware: request count and latency per endpoint and status, and a JSON access
    log line per request."""

    def __init__(
        self, app: FastAPI, predictions: Predictions, metrics: Metrics, log_requests: bool
    ) -> None:
        self.app = app
        self.predictions = predictions
        self.metrics = metrics
        self.log_requests = log_requests
        self.state = app.state  # tests and the server reach the slot through this

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_observe(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope["path"]
        handler = self.predictions if path in PATHS and scope["method"] == "POST" else self.app
        try:
            await handler(scope, receive, send_and_observe)
        finally:
            elapsed = time.perf_counter() - started
            endpoint = path if path in ROUTES else "other"
            code = str(status)
            self.metrics.requests.labels(endpoint, scope["method"], code).inc()
            self.metrics.latency.labels(endpoint, code).observe(elapsed)
            if self.log_requests:
                state = scope.get("state") or {}
                client = scope.get("client")
                access_log.info(
                    json.dumps(
                        {
                            "ts": round(time.time(), 6),
                            "client": f"{client[0]}:{client[1]}" if client else None,
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "ms": round(elapsed * 1000, 3),
                            # the version that answered; otherwise the one being served
                            "model_version": state.get("model_version") or self._serving(),
                        }
                    )
                )

    def _serving(self) -> str | None:
        current = self.state.slot.current
        return None if current is None else current.version


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "0"
