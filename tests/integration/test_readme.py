"""The README's commands, run as a new user runs them (in a fresh folder, no servers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import BIN, free_port, run_mlpipe, stop, wait_http

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_readme_shows_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make run$", readme, re.M) and re.search(r"^make test$", readme, re.M)
    assert "tuning_results.json" in readme and "PREFECT_API_URL" in readme


def test_init_then_train_the_default_spec(tmp_path):
    """`mlpipe init` + `mlpipe train --config mlpipe.yaml`: the documented default search."""
    home = str(tmp_path / "prefect")
    assert run_mlpipe(["init"], tmp_path, PREFECT_HOME=home).returncode == 0
    done = run_mlpipe(["train", "--config", "mlpipe.yaml"], tmp_path, PREFECT_HOME=home)
    assert done.returncode == 0, done.stdout + done.stderr
    # nothing but our own output reaches the terminal: no Prefect/MLflow chatter, no tracebacks
    for noise in (
        "Traceback",
        "Successfully registered",
        "Finished in state",
        "database is locked",
    ):
        assert noise not in done.stdout + done.stderr
    assert "trial 81/81" in done.stderr and "top 5 of 81 trials (0 failed)" in done.stdout
    [results] = (tmp_path / "artifacts").glob("*/tuning_results.json")
    payload = json.loads(results.read_text())
    assert payload["n_trials"] == 81 and payload["alias"] == "champion"
    assert (tmp_path / "mlflow.db").is_file() and (
        tmp_path / "artifacts" / "logs" / "mlpipe.log"
    ).is_file()

    # then the README's serving example against the model this run registered
    body = re.search(r"-d '(\{.*?\})'", (ROOT / "README.md").read_text(), re.S)[1]
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlpipe"),
            "serve",
            "--model",
            "models:/boston-rf@champion",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", server)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            content=body,
            headers={"Content-Type": "application/json"},
        ).json()
        assert answer["model"] == {"name": "boston-rf", "version": "1", "alias": "champion"}
        assert 5 < answer["predictions"][0] < 50
    finally:
        stop(server)
