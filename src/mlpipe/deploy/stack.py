"""The local stack: a Prefect server, an MLflow tracking server and a process worker.

``up`` starts the three in the background on loopback ports, each in its own process group with
its output in ``STATE/logs/``, waits until each answers, and records them in ``STATE/stack.json``
(pid, process start time, URL). ``status`` and ``down`` act on exactly those processes: a pid is
trusted only while its start time still matches, so a reused pid is never signalled. ``active``
is what other commands call to find a running stack (no HTTP, one small file read).

State folder: ``$MLPIPE_HOME``, default ``~/.mlpipe``; the Prefect database, the MLflow SQLite
store and its artifacts live under it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from mlpipe.errors import UserError
from mlpipe.processes import alive, local_http, start_time, stop_group, wait_until
from mlpipe.settings import DEFAULT_POOL, Settings

STATE_FILE = "stack.json"
HOST = "127.0.0.1"
WORKER_NAME = "mlpipe-stack"


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$MLPIPE_HOME`` or ``~/.mlpipe``."""
    return Settings.from_env(environ).home


@dataclass
class Service:
    """One process of the stack."""

    name: str
    pid: int
    started: str | None  # the kernel's start time of the pid, to detect pid reuse
    url: str
    health: str  # a URL that answers 200 when the service is up
    log: str

    def running(self) -> bool:
        return start_time(self.pid) == self.started and alive(self.pid)

    def answering(self) -> bool:
        """Servers: ``health`` answers 200. The worker: the pool lists it ONLINE (it
        heartbeats to the API); its ``health`` is the pool's worker filter."""
        import httpx

        with contextlib.suppress(httpx.HTTPError, ValueError):
            if self.name != "worker":
                return local_http().get(self.health, timeout=2).status_code == 200
            reply = local_http().post(self.health, json={}, timeout=2)
            return any(w["name"] == WORKER_NAME and w["status"] == "ONLINE" for w in reply.json())
        return False


@dataclass
class Stack:
    """What ``up`` started."""

    folder: str
    services: list[Service]
    pool: str

    @property
    def prefect_api_url(self) -> str:
        return self._service("prefect").url

    @property
    def mlflow_url(self) -> str:
        return self._service("mlflow").url

    def _service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def environment(self) -> dict[str, str]:
        """The variables that point a shell (and mlpipe, Prefect, MLflow) at this stack."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_url}

    def save(self) -> None:
        path = Path(self.folder) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, folder: Path) -> Stack | None:
        path = folder / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{path} is unreadable ({exc}); remove it if no stack is running"
            ) from exc
        return cls(raw["folder"], [Service(**s) for s in raw["services"]], raw["pool"])


def active(environ: Mapping[str, str] = os.environ) -> Stack | None:
    """The stack recorded in the state folder if its Prefect server process is running."""
    try:
        stack = Stack.load(state_dir(environ))
    except UserError:
        return None
    if stack is None or not stack._service("prefect").running():
        return None
    return stack


def up(
    folder: Path,
    prefect_port: int,
    mlflow_port: int,
    pool: str = DEFAULT_POOL,
    timeout: float = 180,
    with_worker: bool = True,
    artifacts: str | None = None,
) -> Stack:
    """Start the three services (see the module docstring; without ``with_worker``, the two
    servers only); fail with the log's tail if one does not come up, stopping those already
    started. ``artifacts``: MLflow's artifact destination (an ``s3://BUCKET/PREFIX``, checked
    before anything starts; default: a folder of the stack's)."""
    existing = Stack.load(folder)
    if existing and any(s.running() for s in existing.services):
        raise UserError(
            f"a stack is already running from {folder} (mlpipe status); stop it with mlpipe down"
        )
    if artifacts is not None:
        _check_artifacts(artifacts)
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (folder / "mlflow").mkdir(exist_ok=True)
    prefect_port, mlflow_port = (
        _port(prefect_port, "--prefect-port"),
        _port(mlflow_port, "--mlflow-port"),
    )
    bin_dir = Path(sys.executable).parent
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # mlflow server runs uvicorn from PATH
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    # MLflow's server job runner (GenAI trace and prompt jobs, which mlpipe does not use) starts
    # eight huey consumers, ~2 GB and ~40 s of CPU: off unless the user turns it on
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    prefect_url, mlflow_url = f"http://{HOST}:{prefect_port}/api", f"http://{HOST}:{mlflow_port}"
    stack = Stack(str(folder), [], pool)
    try:
        stack.services.append(
            _start(
                "prefect",
                [str(bin_dir / "prefect"), "server", "start",
                 "--host", HOST, "--port", str(prefect_port)],
                # the UI's own API calls: Prefect's default is port 4200 whatever --port says
                {**env, "PREFECT_UI_API_URL": prefect_url},
                logs, prefect_url, f"{prefect_url}/health",
            )
        )  # fmt: skip
        stack.services.append(
            _start(
                "mlflow",
                [str(bin_dir / "mlflow"), "server", "--host", HOST, "--port", str(mlflow_port),
                 "--backend-store-uri", f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}",
                 "--artifacts-destination", artifacts or str(folder / "mlflow" / "artifacts"),
                 "--workers", "1"],
                env, logs, mlflow_url, f"{mlflow_url}/health",
            )
        )  # fmt: skip
        stack.save()
        for service in stack.services:
            _wait_ready(service, timeout)
        if not with_worker:
            return stack
        worker_env = {**env, **stack.environment()}
        _ensure_process_pool(pool, prefect_url)
        worker = _start(
            "worker",
            [str(bin_dir / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
             "--name", WORKER_NAME],
            worker_env, logs, prefect_url, f"{prefect_url}/work_pools/{pool}/workers/filter",
            cwd=Path.cwd(),  # flow runs start here unless a deployment sets working_dir
        )  # fmt: skip
        stack.services.append(worker)
        stack.save()
        _wait_ready(worker, timeout)
    except BaseException:
        down(stack)
        raise
    return stack


def _check_artifacts(artifacts: str) -> None:
    """An S3 artifact destination whose bucket answers (MLflow's server would start and fail at
    the first upload otherwise)."""
    from mlpipe.batch import objects

    if not objects.is_s3(artifacts):
        raise UserError(f"--artifacts {artifacts}: expected s3://BUCKET/PREFIX")
    url = objects.S3Url.parse(artifacts, "--artifacts")
    objects.ObjectStore.from_env().check_bucket(url)


def _port(port: int, option: str) -> int:
    """``port`` if free (0: any free port)."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise UserError(
                f"{option} {port}: the port is in use; pick another (0: any free)"
            ) from None
        return int(sock.getsockname()[1])


def _start(
    name: str,
    command: list[str],
    env: dict[str, str],
    logs: Path,
    url: str,
    health: str,
    cwd: Path | None = None,
) -> Service:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=cwd or logs.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: down() stops it and its children
        )
    return Service(name, proc.pid, start_time(proc.pid), url, health, str(log))


def _wait_ready(service: Service, timeout: float) -> None:
    if wait_until(service.answering, service.running, timeout):
        return
    if not service.running():
        raise UserError(
            f"{service.name} exited while starting; see {service.log}:\n{_tail(service.log)}"
        )
    raise UserError(f"{service.name} was not ready in {timeout:.0f}s; see {service.log}")


def _ensure_process_pool(pool: str, api_url: str) -> None:
    """Create the process pool first, so the worker does not race the deployments for it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mlpipe.deploy.deployments import ensure_pool

    with temporary_settings({PREFECT_API_URL: api_url}):
        ensure_pool(pool, "process")


def status(stack: Stack) -> list[tuple[Service, bool, bool]]:
    """(service, process running, answering) for each service."""
    rows = []
    for service in stack.services:
        running = service.running()
        rows.append((service, running, running and service.answering()))
    return rows


def down(stack: Stack, grace: float = 20.0) -> list[str]:
    """SIGTERM each recorded process group (worker first), SIGKILL what is left after
    ``grace`` seconds; forget the stack. Returns what it stopped."""
    stopped = []
    for service in reversed(stack.services):
        if not service.running():
            continue
        stop_group(service.pid, grace)
        stopped.append(f"{service.name} (pid {service.pid})")
    (Path(stack.folder) / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _tail(path: str, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return ""
