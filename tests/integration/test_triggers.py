"""Event-driven runs and monitoring against a real `prefect server` and `mlflow server`, with a
process worker: `mlpipe deploy triggers`; partitions landing in the incoming folder are scored
exactly once each through the sensor's events; a drifted partition calls the drift webhook and an
undrifted one does not; a new champion re-scores the latest partition; the drift report renders
in Chromium; and `mlpipe serve` reports the drift of its traffic on /metrics and as an event."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    BIN,
    ONE_AT_A_TIME,
    api,
    free_port,
    own_servers,
    prefect_worker,
    render_in_chromium,
    run_mlpipe,
    stop,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
POOL = "test-trigger-pool"
MODEL = "triggers-rf"
DEPLOYMENT = "triggers"
WEAK = {"n_estimators": [5], "max_depth": [2]}  # version 1: easy to beat
STRONG = {"n_estimators": [60], "max_depth": [None]}  # version 2: the new champion
DAYS = {"plain": "date=2026-11-20", "drifted": "date=2026-11-21", "latest": "date=2026-11-22"}


def drifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Shifted means: more rooms, poorer neighbourhoods, older houses."""
    return frame.assign(RM=frame["RM"] + 1.5, LSTAT=frame["LSTAT"] * 2, AGE=frame["AGE"] * 0.5)


def train(project: dict, params: dict) -> str:
    spec = {**ONE_AT_A_TIME, "search": {"params": params}, "tracking": {"experiment": MODEL},
            "registry": {"model_name": MODEL}}  # fmt: skip
    (project["root"] / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], project["root"],
                        **project["env"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """This module's own servers, not the run's: its automations answer any partition's
    data-arrived and any model's drift event, which other modules send to the shared servers
    while this one runs."""
    with own_servers(tmp_path_factory.mktemp("servers")) as servers:
        yield servers


@pytest.fixture(scope="module")
def project(servers, receiver, tmp_path_factory):
    """Version 1 registered, `mlpipe deploy triggers` applied, and a process worker."""
    root = tmp_path_factory.mktemp("triggers")
    env = {k: servers[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    project = {"root": root, "env": env, "api": servers["PREFECT_API_URL"]}
    assert "alias champion" in train(project, WEAK)
    result = run_mlpipe(
        ["deploy", "triggers", "--pool", POOL, "--sensor-interval", "2", "--sensor-window", "600",
         "--notify-webhook", receiver.url, "--name", DEPLOYMENT,
         "--model", f"models:/{MODEL}@champion"],
        root, **env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        with prefect_worker(POOL, root, env):
            yield project | {"output": result.stdout}
    finally:  # the sensor's schedule would go on filling the session's server
        for flow in ("watch_incoming", "batch_score", "tune"):
            found = api(project, "GET", f"/deployments/name/{flow}/{DEPLOYMENT}", ok=(404,))
            if found.status_code == 200:
                api(project, "DELETE", f"/deployments/{found.json()['id']}")


def runs_of(project, flow: str, state: str | None = None) -> list[dict]:
    body: dict = {
        "flows": {"name": {"any_": [flow]}},
        "deployments": {"name": {"any_": [DEPLOYMENT]}},
        "sort": "START_TIME_ASC",
        "limit": 200,
    }
    if state:
        body["flow_runs"] = {"state": {"type": {"any_": [state]}}}
    return api(project, "POST", "/flow_runs/filter", json=body).json()


def sensor_looks(project) -> list[dict]:
    """The sensor's log lines, one a look at the incoming folder."""
    ids = [r["id"] for r in runs_of(project, "watch_incoming")]
    body = {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200}
    return [
        line
        for line in api(project, "POST", "/logs/filter", json=body).json()
        if "partition(s) waiting" in line["message"]
    ]


def wait_for(what: str, check, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.TransportError:  # a busy server answering late: ask again
            found = None
        if found:
            return found
        time.sleep(1)
    raise TimeoutError(f"waited {seconds} s for {what}")


def land(root: Path, partition: str, frame: pd.DataFrame) -> None:
    """Write under a hidden name, then rename: the sensor never sees half a file."""
    folder = root / "data/incoming" / partition
    folder.mkdir(parents=True)
    frame.to_csv(folder / ".part-0.csv.tmp", index=False)
    (folder / ".part-0.csv.tmp").rename(folder / "part-0.csv")


def drift_bodies(receiver) -> list[dict]:
    return [b for b in map(json.loads, receiver.bodies) if b["event"] == "mlpipe.drift.detected"]


def test_deploy_triggers_creates_the_deployments_and_the_scheduler_fills_them(project):
    out = project["output"]
    for name in ("tune", "batch_score", "watch_incoming"):
        assert f"deployment {name}/{DEPLOYMENT} (" in out
    assert "mlpipe.drift.detected calls" in out
    names = {a["name"] for a in api(project, "POST", "/automations/filter", json={}).json()}
    assert {f"{DEPLOYMENT}: drift detected", "mlpipe: score a partition when it lands"} <= names
    # the weekly retrain's runs are created by the server's scheduler (sqlalchemy<2.1 pin)
    scheduled = wait_for("tune's scheduled runs", lambda: runs_of(project, "tune", "SCHEDULED"))
    assert all(r["expected_start_time"] > r["created"] for r in scheduled)
    # the sensor looks every 2 s from one run that watches 598 s: the scheduler keeps an hour of
    # 10-minute runs ahead, not the 100 it keeps of a 2-second schedule
    sensor = wait_for("the sensor's runs", lambda: runs_of(project, "watch_incoming"))
    assert len(sensor) <= 8 and sensor[0]["parameters"]["poll_seconds"] == 2
    assert "starts now" in out  # the first look: not a window away


def test_each_landed_partition_is_scored_once_and_drift_calls_the_webhook(project, receiver):
    root, frame = project["root"], pd.read_csv(BOSTON)
    land(root, DAYS["plain"], frame)
    land(root, DAYS["drifted"], drifted(frame))
    land(root, DAYS["latest"], frame.sample(frac=1.0, random_state=1))

    def all_scored():
        done = runs_of(project, "batch_score", "COMPLETED")
        return done if len(done) >= 3 else None

    done = wait_for("three scoring runs", all_scored)
    assert sorted(r["parameters"]["partition"] for r in done) == sorted(DAYS.values())
    for partition in DAYS.values():
        out = pd.read_parquet(root / "data/scored" / partition / "predictions.parquet")
        assert len(out) == 506 and set(out["model_version"]) == {"1"}
    # more looks go by: still one scoring run per partition
    looks = len(sensor_looks(project))
    wait_for("two more looks", lambda: len(sensor_looks(project)) >= looks + 2)
    assert len(runs_of(project, "batch_score")) == 3

    (body,) = wait_for("the drift webhook", lambda: drift_bodies(receiver))
    assert body["source"] == f"batch:{DAYS['drifted']}" and body["version"] == "1"
    assert {"RM", "LSTAT"} <= set(body["drifted_features"]) and body["max_psi"] > 0.2


def test_the_drift_report_is_logged_to_mlflow_and_renders_in_chromium(project, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(project["env"]["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"{MODEL}-scoring")
    runs = {
        r.data.tags["mlpipe.partition"]: r for r in client.search_runs([experiment.experiment_id])
    }
    assert set(runs) == set(DAYS.values())
    assert runs[DAYS["drifted"]].data.tags["mlpipe.drifted"] == "true"
    assert runs[DAYS["plain"]].data.tags["mlpipe.drifted"] == "false"
    assert runs[DAYS["drifted"]].data.metrics["drift_psi_RM"] > 0.2
    assert runs[DAYS["plain"]].data.metrics["drift_psi_RM"] < 0.1
    page = Path(client.download_artifacts(runs[DAYS["drifted"]].info.run_id,
                                          "drift_report.html", str(tmp_path)))  # fmt: skip
    dom = render_in_chromium(page, tmp_path / "report.png")
    # the page's script ran and counted the bars of 14 charts (13 features and the prediction)
    rendered = int(dom.split('data-rendered="')[1].split('"')[0])
    assert rendered >= 14 * 2 * 2
    assert '<tr class="drifted"><td>RM</td>' in dom and "drift in " in dom
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
    orange = np.all(pixels == (0xE0, 0x7B, 0x39), axis=-1).sum()  # the bars of this run
    assert orange > 1000, "the charts were not painted"


def test_a_new_champion_re_scores_the_latest_partition(project):
    assert "alias champion" in train(project, STRONG)

    def rescored():
        runs = [r for r in runs_of(project, "batch_score", "COMPLETED")
                if r["parameters"]["partition"] == "latest"]  # fmt: skip
        return runs or None

    (run,) = wait_for("the re-scoring run", rescored)
    assert run["parameters"]["model"] == f"models:/{MODEL}/2"
    out = pd.read_parquet(project["root"] / "data/scored" / DAYS["latest"] / "predictions.parquet")
    assert len(out) == 506 and set(out["model_version"]) == {"2"}
    older = pd.read_parquet(project["root"] / "data/scored" / DAYS["plain"] / "predictions.parquet")
    assert set(older["model_version"]) == {"1"}  # only the latest partition is re-scored


def test_score_reads_a_database_url_from_a_prefect_secret_block(project, tmp_path):
    import sqlite3

    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shop = tmp_path / "shop.db"
    with sqlite3.connect(shop) as conn:
        pd.read_csv(BOSTON).to_sql("houses", conn, index=False)
    with temporary_settings({PREFECT_API_URL: project["api"]}):
        Secret(value=f"sqlite:///{shop}").save("mlpipe-test-shop", overwrite=True)
    out = tmp_path / "scored.parquet"
    args = ["score", "-m", f"models:/{MODEL}@champion", "--table", "houses", "-o", str(out)]
    found = run_mlpipe([*args, "-i", "secret:mlpipe-test-shop"], project["root"], **project["env"])
    assert found.returncode == 0, found.stderr
    assert "scored 506 of 506 rows" in found.stdout and len(pd.read_parquet(out)) == 506
    missing = run_mlpipe([*args, "-i", "secret:no-such-block"], project["root"], **project["env"])
    assert missing.returncode == 2 and "no Prefect Secret block" in missing.stderr


def test_serve_reports_drift_on_metrics_and_as_an_event(project, receiver):
    port = free_port()
    log = open(project["root"] / "serve.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(BIN / "mlpipe"), "serve", "--model", f"models:/{MODEL}@champion",
         "--port", str(port), "--drift-window", "200", "--drift-seconds", "0.5",
         "--no-access-log"],
        cwd=project["root"], env={**os.environ, **project["env"]},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", server)
        frame = pd.read_csv(BOSTON).drop(columns=["MEDV"])

        def post(rows: pd.DataFrame) -> None:
            # one request: the background check (every 0.5 s) never sees a half-filled window,
            # whose PSI on 100 rows can cross the threshold by chance
            body = rows.to_dict(orient="records")
            assert httpx.post(f"{url}/predict", json=body).status_code == 200

        def gauge(text: str, name: str) -> float:
            (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")
                       or ln.startswith(name + "{")]  # fmt: skip
            return float(line.rsplit(" ", 1)[1])

        post(frame.sample(200, random_state=2))
        text = httpx.get(f"{url}/metrics").text
        assert gauge(text, "mlpipe_drift_window_rows") == 200
        assert gauge(text, "mlpipe_drift_detected") == 0
        assert gauge(text, 'mlpipe_drift_psi{column="RM"}') < 0.2
        time.sleep(1.5)  # a background check sees the calm window: no event
        assert not [b for b in drift_bodies(receiver) if b["source"] == "serve"]

        post(drifted(frame).sample(200, random_state=3))  # the window now holds only these
        text = httpx.get(f"{url}/metrics").text
        assert gauge(text, "mlpipe_drift_detected") == 1
        assert gauge(text, 'mlpipe_drift_psi{column="RM"}') > 0.2
        assert gauge(text, 'mlpipe_drift_psi{column="prediction"}') > 0
        (event,) = wait_for(
            "the serving drift event",
            lambda: [b for b in drift_bodies(receiver) if b["source"] == "serve"],
            seconds=60,
        )
        assert event["version"] == "2" and "RM" in event["drifted_features"]
    finally:
        stop(server)
        log.close()


def test_retrain_on_drift_adds_a_run_of_tune_to_the_drift_automation(project, receiver):
    result = run_mlpipe(
        ["deploy", "triggers", "--pool", POOL, "--notify-webhook", receiver.url,
         "--retrain-on-drift", "--name", DEPLOYMENT, "--model", f"models:/{MODEL}@champion"],
        project["root"], **project["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"and runs tune/{DEPLOYMENT}" in result.stdout
    automations = api(project, "POST", "/automations/filter", json={}).json()
    (drift,) = [a for a in automations if a["name"] == f"{DEPLOYMENT}: drift detected"]  # replaced
    tune = api(project, "GET", f"/deployments/name/tune/{DEPLOYMENT}").json()
    kinds = {a["type"]: a for a in drift["actions"]}
    assert set(kinds) == {"call-webhook", "run-deployment"}
    assert kinds["run-deployment"]["deployment_id"] == tune["id"]
    refused = run_mlpipe(["deploy", "triggers", "--retrain-on-drift"], project["root"],
                         **project["env"])  # fmt: skip
    assert refused.returncode == 2 and "--notify-webhook" in refused.stderr
