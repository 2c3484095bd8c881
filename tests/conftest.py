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
for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(name, None)


BOSTON = Path(__file__).parents[1] / "src/mlpipe/data/boston.csv"


@pytest.fixture(scope="session")
def frame():
    import pandas as pd

    return pd.read_csv(BOSTON).drop(columns=["MEDV"]).astype("float64")


@pytest.fixture(scope="session")
def model(frame):
    """A real forest as the LoadedModel `predictor.load_model` builds from the registry
    (version 3), behind the ONNX fast path."""
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor

    from mlpipe.contract import InputContract
    from mlpipe.fastpath import NativePredictor, OnnxPredictor
    from mlpipe.onnx_export import to_onnx
    from mlpipe.predictor import LoadedModel, ModelRef

    forest = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0, n_jobs=1)
    forest.fit(frame, pd.read_csv(BOSTON)["MEDV"])
    contract = InputContract(tuple(frame.columns), ("double",) * frame.shape[1])
    native = NativePredictor(forest, contract.names)
    return LoadedModel(
        ref=ModelRef("models:/boston-rf/3", "boston-rf", None, "3"),
        run_id=None,
        contract=contract,
        signature={},
        predictor=OnnxPredictor(to_onnx(forest, frame.shape[1])),
        native=native,
        parity=None,
        fallback_reason=None,
        load_seconds=0.0,
    )


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
