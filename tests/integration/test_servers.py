"""`mlpipe train` as a user runs it against real servers: PREFECT_API_URL at `prefect server
start`, MLFLOW_TRACKING_URI at `mlflow server`. The flow run and its task runs must show in
Prefect, and the runs and registered model in MLflow. (The servers and the run are the session's,
``served_project``: the model the deployment tests then run.)"""

from __future__ import annotations

import httpx
import pytest
from conftest import SERVERS_GRID
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

NAME = "boston-rf"  # the default experiment and registered model


def test_train_against_prefect_and_mlflow_servers(servers, served_project):
    """The session's `mlpipe train` against both servers (``served_project``)."""
    done = served_project
    assert "alias champion" in done["stdout"], done["stdout"]
    assert "Starting temporary server" not in done["stdout"] + done["stderr"]  # the given server
    # one link to the search's parent run, not MLflow's "View run" pair for each of its runs
    uri = servers["MLFLOW_TRACKING_URI"]
    assert "View run" not in done["stdout"] and "View experiment" not in done["stdout"]
    [link] = [line for line in done["stdout"].splitlines() if line.startswith("mlflow parent")]
    assert link.startswith(f"mlflow parent run {uri}/#/experiments/")

    api = servers["PREFECT_API_URL"]
    flow_runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["tune"]}},
            # not a deployment's (their scheduled runs wait on the session's server)
            "flow_runs": {"deployment_id": {"is_null_": True}},
        },
    ).json()
    # the one tune run of this spec (other commands on these servers tune other grids or names)
    [run] = [r for r in flow_runs if r["parameters"]["spec"]["search"]["params"] == SERVERS_GRID]
    assert run["state_type"] == "COMPLETED"
    flow = httpx.get(f"{api}/flows/{run['flow_id']}").json()
    assert flow["name"] == "tune"
    task_runs = httpx.post(
        f"{api}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run["id"]]}}}
    ).json()
    names = sorted(t["name"] for t in task_runs)
    assert sum(n.startswith("cv n_estimators=5/10") for n in names) == 2  # one per unit
    assert any(n.startswith("refit") for n in names)

    client = MlflowClient(
        tracking_uri=servers["MLFLOW_TRACKING_URI"], registry_uri=servers["MLFLOW_TRACKING_URI"]
    )
    version = client.get_model_version_by_alias(NAME, "champion")
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 4
    assert str(version.version) == "1"
    import mlflow.sklearn

    mlflow.set_tracking_uri(servers["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(servers["MLFLOW_TRACKING_URI"])
    model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
    assert model.n_estimators in (5, 10)
