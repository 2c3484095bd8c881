"""Test-wide environment: a private PREFECT_HOME and MLPIPE_HOME, no analytics, no outside
servers. Set before anything imports Prefect, so the ephemeral server of this test process uses a
temporary database and no developer's ~/.prefect is touched.

Shared fixtures: a real forest on the Boston data behind the ONNX fast path, and a local
Kinesis/DynamoDB endpoint (moto's server on a loopback port, real HTTP) with fresh streams.
(One conftest.py per level: integration tests import theirs as the module ``conftest``.)
"""

import os
import tempfile
import uuid
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="mlpipe-prefect-home-")
os.environ["PREFECT_HOME"] = _home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
# no developer's `mlpipe up` stack: each test that wants one starts its own
os.environ["MLPIPE_HOME"] = tempfile.mkdtemp(prefix="mlpipe-home-")
# What every process of one run shares: the controller (or the only process) makes the folder
# before xdist starts its workers, which inherit the variable; the session servers and models
# are made there once (tests/integration/conftest.py) and stopped by ``pytest_sessionfinish``
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["MLPIPE_TESTS_SHARED"] = tempfile.mkdtemp(prefix="mlpipe-tests-shared-")
for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)


BOSTON = Path(__file__).parents[1] / "src/mlpipe/data/boston.csv"

# The slowest modules first, longest first (2-5 min each on 2 cores): `make test`'s xdist hands
# whole modules to its two processes in collection order, and a long module collected last
# runs alone at the end while the other process has nothing left to do. test_image comes in the
# middle: its cold `make image` (~5 min, mostly downloads and unpacking) runs in the background
# from the first integration test on (tests/integration/conftest.py: image_build), and is done
# by the time a process reaches the module.
SLOW_FIRST = ("scale", "stack", "deploy", "tune", "database", "triggers", "serve", "image",
              "classify", "readme", "stream", "score")  # fmt: skip


# Each module's time (its tests' setup, call and teardown, summed), printed with --durations:
# where a run's minutes go. With xdist the controller receives every worker's reports.
MODULE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::")[0]
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if not MODULE_SECONDS:
        return
    terminalreporter.write_sep("=", "seconds per module (setup + call + teardown)")
    for module, seconds in sorted(MODULE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}s {module}")
    total = sum(MODULE_SECONDS.values())
    terminalreporter.write_line(f"{total:8.1f}s in all (the processes' sum, not the wall time)")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or the only process), after every worker finished: stop the shared
    servers by pid and remove what the run shared."""
    if hasattr(session.config, "workerinput"):
        return
    import shutil

    from mlpipe.processes import stop_group

    shared = Path(os.environ["MLPIPE_TESTS_SHARED"])
    if (shared / "servers").is_dir():
        from mlpipe.deploy import stack

        started = stack.Stack.load(shared / "servers")
        if started is not None:
            stack.down(started, grace=15)
    images = shared / "images"
    unfinished = not (images / "rc").is_file()  # (a finished build's pid may be another's now)
    for name in ("build.pid",) * unfinished + ("dockerd.pid",):  # the daemon the build started
        if (images / name).is_file():
            stop_group(int((images / name).read_text()), grace=15)
    shutil.rmtree(shared, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        if item.path.parent.name == "integration":
            name = item.path.stem.removeprefix("test_")
            if name in SLOW_FIRST:
                return SLOW_FIRST.index(name)
        return len(SLOW_FIRST)

    items.sort(key=rank)  # stable: a module's tests keep their order


@pytest.fixture(scope="session")
def frame():
    import pandas as pd

    return pd.read_csv(BOSTON).drop(columns=["MEDV"]).astype("float64")


def loaded(forest, frame, name: str, version: str):
    """A fitted forest as the LoadedModel `predictor.load_model` builds from the registry,
    behind the ONNX fast path (a classifier's labels in code order beside it)."""
    import numpy as np

    from mlpipe.contract import InputContract
    from mlpipe.fastpath import NativePredictor, OnnxPredictor
    from mlpipe.onnx_export import to_onnx
    from mlpipe.predictor import LoadedModel, ModelRef

    contract = InputContract(tuple(frame.columns), ("double",) * frame.shape[1])
    classes = getattr(forest, "classes_", None)
    return LoadedModel(
        ref=ModelRef(f"models:/{name}/{version}", name, None, version),
        run_id=None,
        contract=contract,
        signature={},
        predictor=OnnxPredictor(to_onnx(forest, frame.shape[1])),
        native=NativePredictor(forest, contract),
        parity=None,
        fallback_reason=None,
        load_seconds=0.0,
        classes=None if classes is None else np.asarray(classes),
    )


@pytest.fixture(scope="session")
def model(frame):
    """A real forest (version 3 of boston-rf), as served."""
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor

    forest = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0, n_jobs=1)
    return loaded(forest.fit(frame, pd.read_csv(BOSTON)["MEDV"]), frame, "boston-rf", "3")


@pytest.fixture(scope="session")
def classifier(frame):
    """A real forest classifier (version 2 of boston-classes: Boston's price as three word
    classes), as served."""
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    price = pd.read_csv(BOSTON)["MEDV"]
    labels = np.where(price < 18, "cheap", np.where(price < 25, "mid", "dear"))
    forest = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0, n_jobs=1)
    return loaded(forest.fit(frame, labels), frame, "boston-classes", "2")


@pytest.fixture(scope="session")
def aws_endpoint():
    """moto's Kinesis/DynamoDB server in a thread on a free loopback port; its URL."""
    from mlpipe.stream import local

    with pytest.MonkeyPatch.context() as patch:
        for key, value in local.LOCAL_CREDENTIALS.items():
            patch.setenv(key, value)
        with local.endpoint(port=0) as url:
            yield url


@pytest.fixture(scope="session")
def client(aws_endpoint):
    """A Kinesis client of the local endpoint."""
    from mlpipe.stream import kinesis

    return kinesis.client(aws_endpoint, "us-east-1")


@pytest.fixture
def new_streams(client):
    """Create streams with fresh names (one per prefix); their names, in order."""
    from mlpipe.stream.local import create_streams

    def create(*prefixes: str, shards: int = 2) -> list[str]:
        names = [f"{prefix}-{uuid.uuid4().hex[:8]}" for prefix in prefixes]
        create_streams(client, names, shards)
        return names

    return create


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's standalone server, S3 mode, as its own process on a free loopback port (what
    MLflow's server, scorers and workers reach over HTTP). While the session runs, this process
    and the processes it starts find it through AWS_ENDPOINT_URL_S3 (S3 clients only) with
    moto's dummy credentials. Yields the endpoint, a boto3 client and ``bucket()``, which makes
    a fresh bucket and returns its name."""
    import socket
    import subprocess
    import sys
    import time

    import boto3
    import httpx

    from mlpipe.processes import stop_group
    from mlpipe.stream import local

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=2)
            break
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"moto_server did not start: {tail}") from None
            time.sleep(0.2)
    env = {**local.LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL_S3": url, "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        client = boto3.client("s3")

        def bucket() -> str:
            name = f"mlpipe-{uuid.uuid4().hex[:12]}"
            client.create_bucket(Bucket=name)
            return name

        try:
            yield {"url": url, "env": env, "client": client, "bucket": bucket}
        finally:
            stop_group(server.pid)
