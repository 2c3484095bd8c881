"""Run the prediction API under uvicorn: one process, or N workers sharing one socket.

Shutdown: on SIGTERM, ``/ready`` answers 503 at once; after ``drain_seconds`` (time for a load
balancer to stop sending, as a Kubernetes preStop sleep gives) uvicorn stops accepting
connections, lets in-flight requests finish (up to ``graceful_timeout_seconds``), and exits. The
handler is installed from the app's lifespan, so it is the same in every worker process.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from types import FrameType
from typing import Any

from mlpipe.errors import UserError
from mlpipe.serve.config import ServeConfig

log = logging.getLogger("mlpipe.serve")


def build_app(config: ServeConfig) -> Any:
    """The app for ``config``: MLflow client, model reference and loader wired in."""
    from mlpipe.predictor import parse_model_uri, registry_client
    from mlpipe.serve.app import create_app
    from mlpipe.serve.slot import default_loader

    client = registry_client(config.tracking_uri)
    return create_app(
        config,
        parse_model_uri(config.model_uri),
        default_loader(config.allow_pickle, config.onnx),
        client,
        on_startup=lambda: install_drain_handler(config.drain_seconds),
        emit=emit_drift if config.drift_events else None,
    )


def emit_drift(model: Any, result: Any) -> None:
    """``mlpipe.drift.detected`` for the served version (sent by Prefect's events thread)."""
    from mlpipe import signals

    signals.drift_detected(model.ref.name, model.version, "serve", result)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process: the config comes from the environment."""
    configure_logging()
    return build_app(ServeConfig.from_env())


def install_drain_handler(drain_seconds: float) -> None:
    """Chain a SIGTERM/SIGINT handler before uvicorn's: mark the server as shutting down
    (/ready 503), then after ``drain_seconds`` let uvicorn stop."""
    from mlpipe.serve.app import SHUTTING_DOWN

    if threading.current_thread() is not threading.main_thread():
        return  # signals belong to the main thread (tests run apps in others)
    for sig in (signal.SIGTERM, signal.SIGINT):
        uvicorn_handler = signal.getsignal(sig)
        if not callable(uvicorn_handler):
            continue

        def drain(signum: int, frame: FrameType | None, stop: Any = uvicorn_handler) -> None:
            if not SHUTTING_DOWN.is_set():
                SHUTTING_DOWN.set()
                log.info("signal %s: /ready is 503; draining for %.1f s", signum, drain_seconds)
            if drain_seconds > 0:
                threading.Timer(drain_seconds, stop, args=(signum, frame)).start()
            else:
                stop(signum, frame)

        signal.signal(sig, drain)


def configure_logging() -> None:
    """mlpipe's log on stderr, the JSON access log on stdout; MLflow's chatter at WARNING."""
    root = logging.getLogger()
    if any(getattr(h, "_mlpipe", False) for h in root.handlers):
        return
    errors = logging.StreamHandler(sys.stderr)
    errors.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors._mlpipe = True  # type: ignore[attr-defined]
    root.addHandler(errors)
    root.setLevel(logging.WARNING)
    for name in ("mlpipe", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.INFO)
    access = logging.getLogger("mlpipe.access")
    access.propagate = False
    access.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)


def check_port(host: str, port: int) -> None:
    """Fail with one line now, before the model loads and the server says it serves, when
    ``host``:``port`` cannot be bound (another server has it, or the address is not this
    machine's). Bound as uvicorn binds (SO_REUSEADDR), then released for it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use (another server?): stop it, or serve on "
                    "another with --port"
                ) from None
            raise UserError(
                f"cannot listen on {host}:{port}: {exc.strerror}; check --host"
            ) from None


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    import uvicorn

    configure_logging()
    common: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "access_log": False,  # the app writes its own structured access log
        "log_config": None,
        "timeout_graceful_shutdown": int(config.graceful_timeout_seconds),
        "lifespan": "on",
    }
    if config.workers == 1:
        uvicorn.run(build_app(config), **common)
        return
    # Workers are fresh processes: they rebuild the config from the environment, and share
    # Prometheus metrics through files in a folder of this run's own.
    metrics_dir = tempfile.mkdtemp(prefix="mlpipe-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ.update(config.to_env())
    try:
        uvicorn.run(
            "mlpipe.serve.server:app_from_env", factory=True, workers=config.workers, **common
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
