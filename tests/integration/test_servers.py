"""`mlpipe train` as a user runs it against real servers: PREFECT_API_URL at `prefect server
start`, MLFLOW_TRACKING_URI at `mlflow server`. The flow run and its task runs must show in
Prefect, and the runs and registered model in MLflow. (The servers and the run are the session's,
``served_project``: the model the deployment tests then run.)"""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import SERVERS_GRID, render_in_chromium
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
    [trials] = [line for line in done["stdout"].splitlines() if line.startswith("mlflow trials")]
    assert "workflowType=machine_learning" in trials  # the training runs, not GenAI traces

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
    # the flow run tells what it produced: the summary in its logs, the top trials as a table
    logs = httpx.post(
        f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200}
    ).json()
    said = "\n".join(line["message"] for line in logs)
    assert "registered boston-rf version 1 -> alias champion" in said and "cv mse" in said
    assert f"mlflow trials, best first {uri}/#/experiments/" in said and "artifacts " in said
    [table] = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    ).json()
    assert table["key"] == "boston-rf-top-trials" and table["type"] == "table"
    assert "n_estimators" in table["data"] and "cv_mse" in table["data"]

    client = MlflowClient(
        tracking_uri=servers["MLFLOW_TRACKING_URI"], registry_uri=servers["MLFLOW_TRACKING_URI"]
    )
    version = client.get_model_version_by_alias(NAME, "champion")
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 4
    assert str(version.version) == "1"
    import mlflow.sklearn

    mlflow.set_tracking_uri(servers["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(servers["MLFLOW_TRACKING_URI"])
    model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
    assert model.n_estimators in (5, 10)


def test_the_web_pages_show_the_search(servers, served_project, tmp_path):
    """In headless Chromium: MLflow's page of the search's trials lists them, best first, with
    the CV score as a column; Prefect's flow-run page shows the run's summary artifact."""
    stdout = served_project["stdout"]
    trials = re.search(r"^mlflow trials, best first (\S+)$", stdout, re.M)[1]
    page = render_in_chromium(trials, tmp_path / "mlflow-trials.png", wait_ms=20000)
    assert page.count("trial-") >= 4 and "cv_mse_mean" in page, page[-3000:]
    assert "Traces" not in re.sub(r"<[^>]+>", " ", page).split("Runs")[0][-200:]
    api = servers["PREFECT_API_URL"]
    [run] = [
        r
        for r in httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["tune"]}},
                            "flow_runs": {"deployment_id": {"is_null_": True}}}).json()
        if r["parameters"]["spec"]["search"]["params"] == SERVERS_GRID
    ]  # fmt: skip
    ui = api.removesuffix("/api")
    page = render_in_chromium(f"{ui}/runs/flow-run/{run['id']}", tmp_path / "prefect-run.png",
                              wait_ms=20000)  # fmt: skip
    assert run["name"] in page and "registered boston-rf version 1" in page, page[-3000:]
