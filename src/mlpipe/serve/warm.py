"""Import what ``mlpipe serve`` loads, once, at image build time: Python writes the bytecode of
each imported module, and the serving image ships bytecode for those and no others (compiling
its every file adds ~170 MB, most of it never loaded). Run as ``python -m mlpipe.serve.warm``;
it must not start anything or read any settings."""

from __future__ import annotations

import importlib

MODULES = (
    # the command, the server and its ASGI stack
    "mlpipe.cli",
    "mlpipe.cli.serve",
    "mlpipe.serve.server",
    "mlpipe.serve.app",
    "mlpipe.serve.slot",
    "mlpipe.signals",
    "uvicorn.main",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.websockets_impl",
    "uvicorn.lifespan.on",
    # the registry over HTTP, model metadata, the ONNX fast path
    "mlflow",
    "mlflow.tracking",
    "mlflow.artifacts",
    "mlflow.models",
    "mlflow.store.artifact.http_artifact_repo",
    "mlflow.store.artifact.mlflow_artifacts_repo",
    "mlflow.store.artifact.local_artifact_repo",
    "mlflow.store.tracking.rest_store",
    "mlflow.store.model_registry.rest_store",
    "onnxruntime",
    "pandas",
)


def main() -> None:
    for name in MODULES:
        importlib.import_module(name)  # a failure: the list is out of date


if __name__ == "__main__":
    main()
