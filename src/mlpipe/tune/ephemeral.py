"""Prefect's ephemeral API server, started the way Prefect starts it, for one command.

Prefect's ``SubprocessASGIServer`` runs ``uvicorn --factory prefect.server.api.server:create_app``
in a subprocess and polls its health. Importing that class imports the whole server app into
the calling process (2.2 s here), on the core the command itself needs while the server starts
in its own process; so the same subprocess is started here without that import. Two settings
differ from Prefect's: the start does not load every installed Prefect collection
(prefect-kubernetes, prefect-dask: about 1 s) to check whether block types need registering,
as this server serves one command's flow, which uses no blocks (a `prefect server start` on the
same database registers them at its own start). A user's own setting of either is kept.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mlpipe.processes import free_port, local_http, stop_group, wait_until

SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",  # as Prefect's own ephemeral server
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
SKIPPED_AT_START = {
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
}
TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
TIMEOUT_SECONDS = 120.0  # a fresh PREFECT_HOME took up to 26 s here; Prefect's default is 20
PORT_IN_USE = 3  # uvicorn's exit status when another process took the port first


def start() -> str:
    """Start the server, stopped when this process exits; its API URL once it is healthy."""
    import prefect

    timeout = float(os.environ.get(TIMEOUT_VARIABLE) or TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout
    while True:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1]),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            env={**SKIPPED_AT_START, **os.environ, **SERVER_ENV},
            start_new_session=True,  # a process group of its own, for stop_group
        )  # fmt: skip
        atexit.register(stop_group, process.pid, 5)
        url = f"http://127.0.0.1:{port}/api"
        healthy = wait_until(
            lambda: _answers(f"{url}/health"),  # noqa: B023 - called before the next port
            lambda: process.poll() is None,  # noqa: B023
            deadline - time.monotonic(),
            every=0.1,
        )
        if healthy:
            return url
        if process.poll() != PORT_IN_USE:
            stop_group(process.pid, 5)
            raise RuntimeError(
                f"Prefect's temporary server did not start in {timeout:.0f} s "
                f"(exit status {process.poll()}; its output is in the backends log); set "
                f"{TIMEOUT_VARIABLE} to wait longer, or PREFECT_API_URL to use a running server"
            )


def _answers(url: str) -> bool:
    try:
        return local_http().get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False
