"""`mlpipe train` as a user runs it against real servers: PREFECT_API_URL at `prefect server
start`, MLFLOW_TRACKING_URI at `mlflow server`. The flow run and its task runs must show in
Prefect, and the runs and registered model in MLflow. (The servers are the session's: this
module's model and experiment are its own.)"""

from __future__ import annotations

import httpx
import pytest
import yaml
from conftest import run_mlpipe
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

NAME = "servers-rf"  # the experiment and the registered model


def test_train_against_prefect_and_mlflow_servers(servers, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"search": {"params": {"n_estimators": [5, 10], "max_depth": [3, None]}}})
    )
    done = run_mlpipe(
        ["train", "--config", str(spec), "--experiment", NAME, "--model-name", NAME],
        tmp_path,
        PREFECT_API_URL=servers["PREFECT_API_URL"],
        MLFLOW_TRACKING_URI=servers["MLFLOW_TRACKING_URI"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "alias champion" in done.stdout, done.stdout
    assert "Starting temporary server" not in done.stdout + done.stderr  # the given server is used

    api = servers["PREFECT_API_URL"]
    flow_runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={
            "flows": {"name": {"any_": ["tune"]}},
            # not a deployment's (their scheduled runs wait on the session's server)
            "flow_runs": {"deployment_id": {"is_null_": True}},
            "sort": "START_TIME_DESC",
            "limit": 1,
        },
    ).json()
    [run] = flow_runs  # the newest tune run started from a command: this one
    assert run["state_type"] == "COMPLETED" and run["parameters"]["spec"]["registry"] == {
        "model_name": NAME
    }
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
