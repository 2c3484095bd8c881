"""`mlpipe up`, `status` and `down` as a user runs them: three real background processes on free
loopback ports, found again by `mlpipe train` and `mlpipe score`, and stopped by pid."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from conftest import api, run_mlpipe

from mlpipe.deploy import stack as local
from mlpipe.processes import alive

pytestmark = pytest.mark.integration

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"


def test_up_status_train_score_down(tmp_path):
    home = tmp_path / "home"
    project = tmp_path / "project"
    project.mkdir()
    env = {"MLPIPE_HOME": str(home), "PREFECT_HOME": str(tmp_path / "client-prefect")}
    pids: dict[str, int] = {}
    up = run_mlpipe(["up", "--prefect-port", "0", "--mlflow-port", "0"], project, **env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.startswith("export ")
        )
        assert set(exports) == {"PREFECT_API_URL", "MLFLOW_TRACKING_URI"}
        state = json.loads((home / "stack.json").read_text())
        pids = {s["name"]: s["pid"] for s in state["services"]}
        assert set(pids) == {"prefect", "mlflow", "worker"}
        assert {p.name for p in (home / "logs").iterdir()} == {
            "prefect.log",
            "mlflow.log",
            "worker.log",
        }

        status = run_mlpipe(["status"], project, **env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" up ") == 3

        again = run_mlpipe(["up", "--prefect-port", "0", "--mlflow-port", "0"], project, **env)
        assert again.returncode == 2 and "already running" in again.stderr

        # no PREFECT_API_URL / MLFLOW_TRACKING_URI given: train finds the stack
        (project / "spec.yaml").write_text(
            yaml.safe_dump({"search": {"params": {"n_estimators": [10], "max_depth": [4]}}})
        )
        train = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], project, **env)
        assert train.returncode == 0, train.stderr
        assert exports["MLFLOW_TRACKING_URI"] in train.stdout
        assert not (project / "mlflow.db").exists()  # not the embedded default
        versions = httpx.get(
            f"{exports['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/get",
            params={"name": "boston-rf"},
            timeout=10,
        ).json()
        assert versions["registered_model"]["aliases"][0]["alias"] == "champion"
        flows = api({"api": exports["PREFECT_API_URL"]}, "POST", "/flows/filter", json={}).json()
        assert "tune" in {f["name"] for f in flows}

        pd.read_csv(BOSTON).to_csv(project / "houses.csv", index=False)
        score = run_mlpipe(["score", "-m", "models:/boston-rf@champion", "-i", "houses.csv",
                            "-o", "scored.parquet"], project, **env)  # fmt: skip
        assert score.returncode == 0, score.stderr
        assert len(pd.read_parquet(project / "scored.parquet")) == 506
    finally:
        down = run_mlpipe(["down"], project, **env)
    assert down.returncode == 0, down.stderr
    assert "stopped worker" in down.stdout
    assert pids and not [name for name, pid in pids.items() if alive(pid)]
    assert not (home / "stack.json").exists()
    assert local.active({"MLPIPE_HOME": str(home)}) is None
    status = run_mlpipe(["status"], project, **env)
    assert status.returncode == 3 and "mlpipe up" in status.stdout
