"""Fixtures that run the real thing: a tuning flow in Prefect's ephemeral mode with a real
SQLite MLflow store, and real `prefect server` / `mlflow server` processes on free loopback
ports. Whatever a fixture starts, it stops (by pid)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from mlpipe.cli import app

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow SQLite store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture
def train(workdir):
    """Run `mlpipe train` in-process (typer's runner) on a spec dict; returns the result."""

    def run(spec: dict, *args: str, expect: int = 0):
        path = workdir / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        result = CliRunner().invoke(app, ["train", "--config", str(path), *args])
        assert result.exit_code == expect, result.output + repr(result.exception)
        return result

    return run


def run_mlpipe(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the installed `mlpipe` command as a user would; `env` is added to the environment
    (PREFECT_API_URL and MLFLOW_TRACKING_URI only when given)."""
    unset = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    base = {k: v for k, v in os.environ.items() if k not in unset}
    mlpipe = str(BIN / "mlpipe")
    return subprocess.run(
        [mlpipe, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=600
    )


def register_model(root: Path, params: dict) -> str:
    """`mlpipe train` a small grid into a SQLite store under ``root``: boston-rf version 1, the
    champion. Returns the store's tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = {"search": {"params": params}, "artifacts_dir": str(root / "artifacts")}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {"PREFECT_HOME": str(root / "prefect"), "MLFLOW_TRACKING_URI": uri}
    result = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], root, **env)
    assert result.returncode == 0, result.stderr
    return uri


def wait_http(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


@contextlib.contextmanager
def background(args: list[str], log: Path, ready_url: str, **popen) -> Iterator[None]:
    """Run a server in its own session, its output in ``log``, from when ``ready_url`` answers
    200 until the block ends; then stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
        try:
            wait_http(ready_url, proc)
            yield
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and its children (it was started in its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def restore_mlflow_uris():
    """For modules that set MLflow's global URIs (as `mlpipe train` does), which MLflow also
    exports as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI: put both back after the module."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {key: os.environ.get(key) for key in keys}
    # the values as set (None: unset), not get_*_uri()'s resolved defaults, which would pin them
    tracking, registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A real `prefect server start` and a real `mlflow server`, each on a free port."""
    root = tmp_path_factory.mktemp("servers")
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect_port, mlflow_port = free_port(), free_port()
    logs = []
    procs = []
    try:
        for name, args in [
            (
                "prefect",
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(prefect_port),
                ],
            ),
            (
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(root / "mlartifacts"),
                    "--workers",
                    "1",
                ],
            ),
        ]:
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    args,
                    env={**env, "PATH": f"{BIN}:{env['PATH']}"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=root,
                )
            )
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", procs[0])
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", procs[1])
        yield {
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "root": root,
        }
    finally:
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()
