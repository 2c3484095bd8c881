"""Deployments as teams run them: a real `prefect server start`, a real `mlflow server`, a process
worker started here, deployments created by `mlpipe deploy`, runs created through the Prefect API
and finished by the worker; a backfill; a failed run that an automation reports to a local
webhook; `mlpipe deploy serve`; and the repository's prefect.yaml deployed by `prefect deploy`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, api, prefect_worker, run_mlpipe, stop, wait_final

pytestmark = pytest.mark.integration

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
POOL = "test-process-pool"


@pytest.fixture(scope="module")
def deployed(served_project, receiver, s3):
    """`mlpipe deploy apply` (work pool, both deployments, the failure automation), then a
    process worker of that pool (which reaches the session's S3 endpoint)."""
    result = run_mlpipe(
        ["deploy", "apply", "--pool", POOL, "--cron", "batch_score=0 6 * * *",
         "--notify-webhook", receiver.url],
        served_project["root"], **served_project["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"created work pool {POOL!r} (process)" in result.stdout
    with prefect_worker(POOL, served_project["root"], served_project["env"]):
        yield {**served_project, "output": result.stdout}


def deployment(project, name: str = "batch_score/mlpipe") -> dict:
    return api(project, "GET", f"/deployments/name/{name}").json()


def partition(root: Path, day: str, frame: pd.DataFrame | None = None) -> Path:
    folder = root / "data/incoming" / f"date={day}"
    folder.mkdir(parents=True)
    (pd.read_csv(BOSTON) if frame is None else frame).to_csv(folder / "part-0.csv", index=False)
    return folder


def test_deploy_apply_registers_both_flows_on_the_pool(deployed):
    root = deployed["root"]
    score = deployment(deployed)
    assert score["work_pool_name"] == POOL
    assert score["entrypoint"] == "mlpipe.batch.flow.batch_score"
    assert score["job_variables"] == {"working_dir": str(root)}
    assert score["parameters"]["input_root"] == str(root / "data/incoming")
    assert [s["schedule"]["cron"] for s in score["schedules"]] == ["0 6 * * *"]
    tune = deployment(deployed, "tune/mlpipe")
    assert tune["entrypoint"] == "mlpipe.tune.flows.tune" and not tune["schedules"]
    assert tune["parameters"]["spec"]["model"]["family"] == "random_forest"  # the built-in spec


def test_a_run_created_through_the_api_is_finished_by_the_worker(deployed):
    partition(deployed["root"], "2026-11-22")
    run = api(
        deployed,
        "POST",
        f"/deployments/{deployment(deployed)['id']}/create_flow_run",
        json={"parameters": {"partition": "date=2026-11-22"}},
    ).json()
    final = wait_final(deployed, run["id"])
    assert final["state"]["type"] == "COMPLETED", final["state"]["message"]
    out = pd.read_parquet(deployed["root"] / "data/scored/date=2026-11-22/predictions.parquet")
    assert len(out) == 506 and out["row"].tolist() == list(range(506))
    assert set(out["model_name"]) == {"boston-rf"} and set(out["model_version"]) == {"1"}


def test_backfill_runs_only_the_missing_partitions(deployed):
    root = deployed["root"]
    for day in ("2026-10-01", "2026-10-02"):
        partition(root, day)
    moved = pd.read_csv(BOSTON)
    partition(root, "2026-10-03", moved.assign(RM=moved["RM"] + 1))
    done = root / "data/scored/date=2026-10-02/predictions.parquet"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"scored earlier")
    result = run_mlpipe(["backfill", "batch_score", "--start", "2026-10-01", "--end",
                         "2026-10-04"], root, **deployed["env"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    lines = {line.split()[1]: line for line in out if line.startswith("│") and "date=" in line}
    notes = {line.split(":")[0]: line for line in out if line.startswith("date=")}
    assert "run" in lines["date=2026-10-01"] and "Completed" in lines["date=2026-10-01"]
    assert "506" in lines["date=2026-10-01"] and "none" in lines["date=2026-10-01"]  # rows, drift
    assert "skipped" in lines["date=2026-10-02"] and "output exists" in notes["date=2026-10-02"]
    assert "Completed" in lines["date=2026-10-03"] and "DRIFT: RM" in lines["date=2026-10-03"]
    assert "no input" in lines["date=2026-10-04"]
    assert done.read_bytes() == b"scored earlier"
    for day in ("2026-10-01", "2026-10-03"):
        assert len(pd.read_parquet(root / f"data/scored/date={day}/predictions.parquet")) == 506
    runs = api(deployed, "POST", "/flow_runs/filter",
               json={"flow_runs": {"tags": {"all_": ["backfill"]}}}).json()  # fmt: skip
    assert sorted(r["parameters"]["partition"] for r in runs) == [
        "date=2026-10-01",
        "date=2026-10-03",
    ]
    forced = run_mlpipe(["backfill", "batch_score", "--start", "2026-10-02", "--end",
                         "2026-10-02", "--force"], root, **deployed["env"])  # fmt: skip
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(pd.read_parquet(done)) == 506


def test_a_backfill_of_s3_partitions_writes_predictions_and_reports_beside_them(deployed, s3):
    import io

    bucket, client = s3["bucket"](), s3["client"]
    result = run_mlpipe(["deploy", "apply", "--pool", POOL, "--name", "s3", "--flow",
                         "batch_score", "--input-root", f"s3://{bucket}/incoming",
                         "--output-root", f"s3://{bucket}/scored"],
                        deployed["root"], **deployed["env"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    houses = pd.read_csv(BOSTON)
    for day, key in (("2026-12-01", "part-0.csv"), ("2026-12-02", "part-0.csv")):
        body = houses.to_csv(index=False).encode()
        client.put_object(Bucket=bucket, Key=f"incoming/date={day}/{key}", Body=body)
    client.put_object(Bucket=bucket, Key="scored/date=2026-12-02/predictions.parquet", Body=b"x")
    result = run_mlpipe(["backfill", "batch_score", "--deployment", "s3", "--start",
                         "2026-12-01", "--end", "2026-12-03"], deployed["root"],
                        **deployed["env"])  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines()
             if line.startswith("│") and "date=" in line}  # fmt: skip
    assert "Completed" in lines["date=2026-12-01"] and "506" in lines["date=2026-12-01"]
    assert "skipped" in lines["date=2026-12-02"] and "no input" in lines["date=2026-12-03"]
    listed = client.list_objects_v2(Bucket=bucket, Prefix="scored/date=2026-12-01/")
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == [
        "drift_report.html",
        "predictions.parquet",
    ]
    body = client.get_object(Bucket=bucket, Key="scored/date=2026-12-01/predictions.parquet")
    assert len(pd.read_parquet(io.BytesIO(body["Body"].read()))) == 506

    # the sensor on the same roots: only a partition with input and no predictions is announced
    client.put_object(Bucket=bucket, Key="incoming/date=2026-12-04/part-0.csv", Body=b"a\n1\n")
    client.put_object(Bucket=bucket, Key="incoming/_staging/part-0.csv", Body=b"a\n1\n")
    client.put_object(Bucket=bucket, Key="incoming/date=2026-12-05/notes.txt", Body=b"")
    look = ("from mlpipe.batch.flow import watch_incoming; "
            f"print(watch_incoming('s3://{bucket}/incoming', 's3://{bucket}/scored'))")  # fmt: skip
    sensor = subprocess.run([str(BIN / "python"), "-c", look], cwd=deployed["root"],
                            env={**os.environ, **deployed["env"]}, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert sensor.returncode == 0, sensor.stderr
    assert sensor.stdout.strip().splitlines()[-1] == "['date=2026-12-04']"


def test_a_failed_run_is_visible_and_calls_the_webhook(deployed, receiver):
    bad = pd.read_csv(BOSTON).drop(columns=["RM"])
    partition(deployed["root"], "2026-09-30", bad)
    result = run_mlpipe(["backfill", "batch_score", "--start", "2026-09-30", "--end",
                         "2026-09-30"], deployed["root"], **deployed["env"])  # fmt: skip
    assert result.returncode == 1
    assert "Failed" in result.stdout
    runs = api(deployed, "POST", "/flow_runs/filter",
               json={"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}},
                     "deployments": {"name": {"any_": ["mlpipe"]}}}).json()  # fmt: skip
    (failed,) = runs
    assert "lacks the model's feature column(s) RM" in failed["state"]["message"]
    task_runs = api(deployed, "POST", "/task_runs/filter",
                    json={"flow_runs": {"id": {"any_": [failed["id"]]}}}).json()  # fmt: skip
    assert [t["run_count"] for t in task_runs] == [1]  # a bad input is not retried
    deadline = time.monotonic() + 60
    while not receiver.bodies and time.monotonic() < deadline:
        time.sleep(0.5)
    assert receiver.bodies, "the automation did not call the webhook"
    payload = json.loads(receiver.bodies[0])
    assert payload["event"] == "prefect.flow-run.Failed"
    assert payload["flow_run_id"] == failed["id"] and payload["deployment"] == "mlpipe"
    assert payload["parameters"]["partition"] == "date=2026-09-30"
    assert "RM" in payload["message"]


def test_prefect_yaml_deploys_with_prefect_deploy(deployed, tmp_path):
    shutil.copy(Path(__file__).parents[2] / "prefect.yaml", tmp_path / "prefect.yaml")
    for pool_type, pool in (("process", "mlpipe-process"), ("kubernetes", "mlpipe-k8s")):
        api(deployed, "POST", "/work_pools/", json={"name": pool, "type": pool_type})
    result = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=tmp_path,
        env={**os.environ, **deployed["env"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    k8s = deployment(deployed, "batch_score/mlpipe-k8s")
    assert k8s["work_pool_name"] == "mlpipe-k8s"
    assert k8s["job_variables"]["memory_limit"] == "2Gi"
    weekly = deployment(deployed, "tune/mlpipe")
    assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 3 * * 1"]


def test_deploy_serve_runs_the_flows_in_one_process(deployed, tmp_path):
    partition(tmp_path, "2026-08-01")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "mlpipe"), "deploy", "serve", "--flow", "batch_score",
         "--interval", "batch_score=86400"],
        cwd=tmp_path,
        # polling every second, not Prefect's default 10 s, as the worker here polls every 2 s
        env={**os.environ, **deployed["env"], "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        found = {}
        while time.monotonic() < deadline and proc.poll() is None:
            found = deployment(deployed)
            if found["parameters"]["input_root"] == str(tmp_path / "data/incoming"):
                break  # the serving process has registered its version of the deployment
            time.sleep(1)
        assert found["parameters"]["input_root"] == str(tmp_path / "data/incoming"), (
            tmp_path / "serve.log"
        ).read_text()
        assert [s["schedule"]["interval"] for s in found["schedules"]] == [86400.0]
        run = api(deployed, "POST", f"/deployments/{found['id']}/create_flow_run",
                  json={"parameters": {"partition": "date=2026-08-01"}}).json()  # fmt: skip
        final = wait_final(deployed, run["id"])
        log.flush()
        assert final["state"]["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()
        assert (tmp_path / "data/scored/date=2026-08-01/predictions.parquet").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Prefect's serve pauses its schedules on exit
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(proc)
        log.close()
    assert deployment(deployed)["paused"] is True


def test_a_later_command_keeps_the_schedules_it_does_not_set(served_project, tmp_path):
    """`deploy triggers` after `deploy apply --cron/--interval` (deployments of their own name
    here, on a pool no worker polls): batch_score keeps apply's daily cron, tune's interval is
    replaced by triggers' weekly cron, and both are said."""
    env, name, pool = served_project["env"], "schedules", "schedules-pool"
    apply = ["deploy", "apply", "--pool", pool, "--name", name, "--cron",
             "batch_score=0 6 * * *", "--interval", "tune=604800"]  # fmt: skip
    assert run_mlpipe(apply, tmp_path, **env).returncode == 0
    try:
        result = run_mlpipe(["deploy", "triggers", "--pool", pool, "--name", name], tmp_path, **env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"batch_score/{name}: kept its schedule cron '0 6 * * *'" in result.stdout
        assert f"tune/{name}: schedule every 604800s replaced by cron '0 3 * * 1'" in result.stdout
        score = deployment(served_project, f"batch_score/{name}")
        assert [s["schedule"]["cron"] for s in score["schedules"]] == ["0 6 * * *"]
        tune = deployment(served_project, f"tune/{name}")
        assert [s["schedule"].get("cron") for s in tune["schedules"]] == ["0 3 * * 1"]
    finally:  # the sensor's schedule would go on filling the session's server
        for flow in ("batch_score", "tune", "watch_incoming"):
            found = api(served_project, "GET", f"/deployments/name/{flow}/{name}", ok=(404,))
            if found.status_code == 200:
                api(served_project, "DELETE", f"/deployments/{found.json()['id']}")
