"""Fixtures that run the real thing: real `prefect server` / `mlflow server` processes on free
loopback ports for the whole run (one pair, however many xdist processes), a tuning flow
in-process against that Prefect server with a real SQLite MLflow store per test. Whatever a
fixture starts, it stops (by pid)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mlpipe.cli import app
from mlpipe.processes import free_port, stop_group

# What the run's xdist processes share (tests/conftest.py makes it and stops what is in it)
SHARED = Path(os.environ["MLPIPE_TESTS_SHARED"])
SERVERS = "servers"  # SHARED/servers: the session servers' stack.json, logs and stores

BIN = Path(sys.executable).parent

# searches more than one module runs: successive halving over Boston's rows (18, 6, then 2
# candidates at seed 4), and TPE in batches of 4
HALVING_GRID = {"max_depth": [None, 3, 6], "min_samples_leaf": [1, 2, 4],
                "max_features": [0.5, 1.0], "n_estimators": [20]}  # fmt: skip
TPE_SPEC = {
    "seed": 5,
    "search": {
        "strategy": "tpe",
        "n_trials": 12,
        "batch_size": 4,
        "params": {
            "n_estimators": {"low": 5, "high": 30},
            "max_features": {"low": 0.3, "high": 1.0},
            "min_samples_leaf": [1, 2, 4],
        },
    },
}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with MLflow's schema and nothing else, made once: creating the
    schema (MLflow's migrations) takes 3-7 s here, for every new store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("empty-store")
    SqlAlchemyStore(f"sqlite:///{root / 'mlflow.db'}", str(root / "mlruns")).engine.dispose()
    return root / "mlflow.db"


@pytest.fixture
def workdir(tmp_path, monkeypatch, empty_store):
    """A fresh working directory with its own MLflow SQLite store (a copy of ``empty_store``,
    its default experiment's artifacts under this folder, as MLflow would have put them)."""
    import shutil
    import sqlite3

    store = shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str((tmp_path / "mlruns" / "0").resolve()),),
        )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    return tmp_path


# The specs of most tests run their trials one at a time, in the process that runs the search:
# the suite's two xdist processes keep both cores busy already, and each of a search's pool
# processes costs ~2 s of CPU for its imports (a spec's default n_jobs: -1). The pool is tested
# where it is the point: test_readme (the default spec), test_scale (two workers, Dask) and
# test_tune's Boston search.
ONE_AT_A_TIME = {"n_jobs": 1}


@pytest.fixture
def train(workdir, servers, monkeypatch):
    """Run `mlpipe train` in-process (typer's runner) on a spec dict, its flow runs on the
    session's Prefect server (Prefect's ephemeral mode has its own tests, run as a user runs
    it: test_readme, test_terminal); returns the result. Trials run one at a time unless the
    spec sets ``n_jobs`` (``ONE_AT_A_TIME``)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = servers["PREFECT_API_URL"]
    monkeypatch.setenv("PREFECT_API_URL", url)

    def run(spec: dict, *args: str, expect: int = 0):
        path = workdir / "spec.yaml"
        path.write_text(yaml.safe_dump({**ONE_AT_A_TIME, **spec}))
        with temporary_settings(updates={PREFECT_API_URL: url}):
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


def register_model(root: Path, params: dict, prefect_api_url: str) -> str:
    """`mlpipe train` a small grid into a SQLite store under ``root`` (flow runs on the Prefect
    server at ``prefect_api_url``: no temporary server to start): boston-rf version 1, the
    champion. Returns the store's tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = {**ONE_AT_A_TIME, "search": {"params": params}, "artifacts_dir": str(root / "artifacts")}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {"PREFECT_API_URL": prefect_api_url, "MLFLOW_TRACKING_URI": uri}
    result = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], root, **env)
    assert result.returncode == 0, result.stderr
    return uri


# The model most modules serve, score or stream: trained once per session (a real `mlpipe train`
# into a SQLite store), then shared read-only or copied (`registered_copy`) by modules that
# register versions or move aliases.
TRAINED_GRID = {"n_estimators": [20, 40], "max_depth": [None, 6]}


@pytest.fixture(scope="session")
def trained(servers) -> dict:
    """boston-rf version 1 (champion), `mlpipe train`'s own, trained once per run; modules
    must not change this store (take ``registered_copy``): its ``root`` and ``uri``."""
    root = made_once(
        "trained", lambda f: register_model(f, TRAINED_GRID, servers["PREFECT_API_URL"])
    )
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}"}


def registered_copy(trained: dict, root: Path) -> str:
    """A copy of the session's store under ``root`` (its registry, runs and artifacts folder;
    the runs' files stay where MLflow wrote them, read-only): its tracking URI."""
    import shutil

    shutil.copytree(trained["root"], root, dirs_exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


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
def background(args: list[str], log: Path, ready_url: str, **popen) -> Iterator[subprocess.Popen]:
    """Run a server in its own session, its output in ``log``, from when ``ready_url`` answers
    200 until the block ends; then stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
        try:
            wait_http(ready_url, proc)
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and its children (it was started in its own process group)."""
    if proc.poll() is None:
        stop_group(proc.pid, grace=15)
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


def made_once(name: str, make: Callable[[Path], object]) -> Path:
    """``SHARED/name``, made by ``make(folder)`` in the first xdist process of the run to get
    here; the others wait on an exclusive lock and find it made (tests/conftest.py stops by pid
    what was started there)."""
    import fcntl

    folder = SHARED / name
    with (SHARED / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / ".made").is_file():
            folder.mkdir(exist_ok=True)
            make(folder)
            (folder / ".made").touch()
    return folder


@contextlib.contextmanager
def own_servers(root: Path) -> Iterator[dict]:
    """A Prefect server and an MLflow server of one's own (``mlpipe up``'s code, no worker)."""
    from mlpipe.deploy import stack

    started = stack.up(root, 0, 0, with_worker=False)
    try:
        yield {**started.environment(), "root": root}
    finally:
        stack.down(started, grace=15)


@pytest.fixture(scope="session")
def servers():
    """A real `prefect server start` and a real `mlflow server` on free ports, one pair for the
    whole run (every xdist process), started by `mlpipe up`'s own code (without its worker) and
    stopped by pid after the last test (tests/conftest.py: ``pytest_sessionfinish``). Modules
    keep out of each other's way by names: their own models and experiments, work pools and
    deployment names."""
    from mlpipe.deploy import stack

    root = made_once(SERVERS, lambda f: stack.up(f, 0, 0, with_worker=False))
    started = stack.Stack.load(root)
    assert started is not None, f"no stack.json in {root}"
    return {**started.environment(), "root": root}


IMAGES = "images"  # SHARED/images: the background `make image` (build_images.sh)


@pytest.fixture(scope="session")
def image_build() -> Path:
    """The folder of the run's one `make image`, started in the background (its own process
    group; build.pid) if no process of the run started it yet: ``rc`` appears there when done."""

    def start(folder: Path) -> None:
        build = subprocess.Popen(
            [str(Path(__file__).with_name("build_images.sh")), str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (folder / "build.pid").write_text(str(build.pid))

    return made_once(IMAGES, start)


@pytest.fixture(scope="session", autouse=True)
def _images_early(request) -> None:
    """A run that holds test_image.py starts its images' build with its first integration
    test, whichever module that is (the build takes minutes; test_image waits for it)."""
    if any(item.path.name == "test_image.py" for item in request.session.items):
        request.getfixturevalue("image_build")


# The session servers' one model: boston-rf, trained by `mlpipe train` against both servers
# once; modules that deploy it or check what the run left on the servers share it read-only.
SERVERS_GRID = {"n_estimators": [5, 10], "max_depth": [3, None]}


@pytest.fixture(scope="session")
def served_project(servers) -> dict:
    """A project folder whose `mlpipe train` (PREFECT_API_URL and MLFLOW_TRACKING_URI at the
    session's servers) registered boston-rf version 1, the champion, once per run: its
    ``root``, ``env``, ``api`` and the command's ``stdout`` / ``stderr``."""
    env = {k: servers[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}

    def train(root: Path) -> None:
        spec = {**ONE_AT_A_TIME, "search": {"params": SERVERS_GRID}}
        (root / "spec.yaml").write_text(yaml.safe_dump(spec))
        done = run_mlpipe(["train", "--config", "spec.yaml"], root, **env)
        assert done.returncode == 0, done.stdout + done.stderr
        output = {"stdout": done.stdout, "stderr": done.stderr}
        (root / "output.json").write_text(json.dumps(output))

    root = made_once("project", train)
    output = json.loads((root / "output.json").read_text())
    return {"root": root, "env": env, "api": servers["PREFECT_API_URL"], **output}


# The statuses Prefect's own client retries: a server on SQLite answers 503 while its database
# is locked by another writer (the scheduler, a worker, a flow run), and means "try again".
RETRYABLE = {429, 502, 503}


def api(project: dict, method: str, path: str, *, ok=(), **kwargs) -> httpx.Response:
    """A call to the Prefect server's API (``project["api"]``), retried as Prefect's client
    retries (5 times, 2**n s apart unless the server says Retry-After); raises on an error
    status other than those in ``ok``."""
    for attempt in range(1, 7):
        reply = httpx.request(method, project["api"] + path, timeout=30, **kwargs)
        if reply.status_code not in RETRYABLE or attempt == 6:
            break
        time.sleep(float(reply.headers.get("Retry-After", 2**attempt)))
    if reply.status_code not in ok:
        reply.raise_for_status()
    return reply


def wait_final(project: dict, flow_run_id: str, seconds: float = 180) -> dict:
    """The flow run once it reaches a final state (through ``api``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = api(project, "GET", f"/flow_runs/{flow_run_id}").json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} is still {run['state']['type']}")


@contextlib.contextmanager
def prefect_worker(
    pool: str, cwd: Path, env: dict[str, str], kind: str = "process", log: Path | None = None
) -> Iterator[None]:
    """`prefect worker start --pool POOL --type KIND`, as a user starts one, polling every
    2 s; its output in ``log`` (default cwd/worker.log); stopped by pid."""
    with (log or cwd / "worker.log").open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", kind],
            cwd=cwd,
            env={**os.environ, **env, "PATH": f"{BIN}:{os.environ['PATH']}",
                 "PREFECT_WORKER_QUERY_SECONDS": "2"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield
        finally:
            # 5 s, not a server's 15: a worker holding a flow run (the sensor watches for
            # minutes) waits out the whole grace before the kill, and no test needs its drain
            stop_group(worker.pid, grace=5)
            worker.wait()


class Receiver:
    """A local webhook: records the bodies POSTed to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver():
    hook = Receiver()
    yield hook
    hook.server.shutdown()


def system_tool(*candidates: str) -> str:
    """The first of ``candidates`` (a command or a path) that exists. `make test` installs the
    Debian packages (`make system-deps`); a run without them skips, except in CI, where the
    test fails."""
    import shutil

    for candidate in candidates:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    message = f"{candidates[0]} is not installed: run `make system-deps` (Debian packages)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_in_chromium(page: Path | str, screenshot: Path, wait_ms: int = 0) -> str:
    """Open ``page`` (a file, or a URL) in headless Chromium; returns the DOM after its scripts
    ran (``wait_ms`` of virtual time for pages that fetch and render), and writes a screenshot
    of the rendered page."""
    chromium = system_tool("chromium", "chromium-browser")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={screenshot.parent / 'chromium-profile'}", "--window-size=1200,900",
        *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []),
    ]  # fmt: skip
    url = page if isinstance(page, str) else page.resolve().as_uri()
    shot = subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr.decode()[-2000:]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (Debian's package) on a free loopback port, in a temporary data
    folder, with password authentication (``mlpipe.localdb``); stopped by pid after the module."""
    from mlpipe.localdb import local_postgres, server_binaries

    if server_binaries() is None:
        system_tool("initdb")  # skips, or fails in CI, with the install hint
    with local_postgres(password="s3cret-for-tests") as server:
        yield {"url": server.url, "password": server.password, "port": server.port}


def boston() -> tuple[pd.DataFrame, pd.Series]:
    with resources.files("mlpipe").joinpath("data/boston.csv").open("rb") as handle:
        frame = pd.read_csv(handle)
    return frame.drop(columns=["MEDV"]), frame["MEDV"]


def assert_same_as_halving_search(payload: dict, search, greater_is_better: bool = False) -> None:
    """Every rung's candidates, resources and mean CV score (1e-9 relative; scikit-learn's
    negated for a loss) as cv_results_ has them, row for row; the same best (the best of the
    last rung)."""
    sign = 1 if greater_is_better else -1
    trials = sorted(payload["trials"], key=lambda t: t["index"])
    results = search.cv_results_
    assert len(trials) == len(results["params"])
    for trial, params, score, rung, amount in zip(
        trials, results["params"], results["mean_test_score"], results["iter"],
        results["n_resources"], strict=True,
    ):  # fmt: skip
        plain = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}
        assert (trial["params"], trial["rung"], trial["resources"]) == (plain, rung, amount)
        assert trial["mean_score"] == pytest.approx(sign * score, rel=1e-9, abs=0)
    best = {k: v.item() if hasattr(v, "item") else v for k, v in search.best_params_.items()}
    assert payload["best"]["params"] == best
    last = max(t["rung"] for t in trials)
    kept = [t for t in trials if t["rung"] < last and not t["eliminated"]]
    assert len(kept) == sum(1 for t in trials if t["rung"] > 0)  # each went one rung on


def assert_same_as_halving_grid_on_boston(payload: dict) -> None:
    """A halving search over ``HALVING_GRID`` on Boston (seed 4, n_samples, factor 3) equals
    scikit-learn's HalvingGridSearchCV with the same settings: 18, 6, then 2 candidates."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV, train_test_split

    X, y = boston()
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=4)
    search = HalvingGridSearchCV(
        RandomForestRegressor(random_state=4), HALVING_GRID, cv=3, factor=3,
        scoring="neg_mean_squared_error", random_state=4, n_jobs=1,
    )  # fmt: skip
    assert_same_as_halving_search(payload, search.fit(X_train, y_train))
    assert [sum(t["rung"] == r for t in payload["trials"]) for r in range(3)] == [18, 6, 2]
