"""What finalize says when shards are missing (the MLflow side runs in
tests/integration/test_scale.py)."""

from types import SimpleNamespace

from mlpipe.search import TrialConfig
from mlpipe.tracking import SHARDS_TAG
from mlpipe.tune.sharded import SHARD_TAG, _not_ready


def run(tags: dict) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(tags={SHARDS_TAG: "3", **tags}))


TRACKER = SimpleNamespace(experiment_id="7", client=SimpleNamespace(tracking_uri="http://m:5000"))
TRIAL = TrialConfig("t1", 0, {})


def test_each_missing_shard_is_named_with_what_it_last_reported():
    parents = [
        run({SHARD_TAG.format(index=0): "failed: DataError: no such column"}),
        run({SHARD_TAG.format(index=1): "running"}),  # a second parent from a start race
    ]
    error = str(_not_ready(TRACKER, "abc", parents, {0: [TRIAL], 1: [TRIAL, TRIAL], 2: [TRIAL]}))
    assert "3 of 3 shard(s) not finished in experiment 7 of http://m:5000" in error
    assert "shard 0/3: 1 trial(s) missing; it says: failed: DataError: no such column" in error
    assert "shard 1/3: 2 trial(s) missing; it says: running" in error
    assert "shard 2/3: 1 trial(s) missing; it says: never started" in error
    at_a_step = str(_not_ready(TRACKER, "abc", parents, {1: [TRIAL]}, "rung 2"))
    assert "search abc (rung 2): 1 of 3 shard(s) not finished" in at_a_step


def test_no_shard_started_says_what_to_run():
    error = str(_not_ready(TRACKER, "abc", [], {}))
    assert "no shard has started" in error and "--shard I/N" in error


def test_shards_racing_to_create_the_experiment_share_the_winners():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    from mlpipe.tracking import Tracker

    class Client:  # another shard creates the experiment between our read and our create
        tracking_uri = "http://mlflow"

        def __init__(self) -> None:
            self.reads = 0

        def get_experiment_by_name(self, name):
            self.reads += 1
            return None if self.reads == 1 else type("E", (), {"experiment_id": "7"})()

        def create_experiment(self, name, tags=None):  # as MlflowClient's
            raise MlflowException("already exists", error_code=RESOURCE_ALREADY_EXISTS)

    assert Tracker(Client(), "sharded").experiment_id == "7"
