"""Deployment definitions, prefect.yaml, partitions and the stack's bookkeeping (no server)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from mlpipe.batch.flow import batch_score, date_partitions, partition_paths
from mlpipe.deploy import deployments, stack, triggers
from mlpipe.errors import UserError
from mlpipe.processes import start_time

PREFECT_YAML = Path(__file__).parents[2] / "prefect.yaml"


def test_schedules_parse_per_flow():
    schedules = deployments.parse_schedules(["batch_score=0 6 * * *"], ["tune=604800"])
    assert schedules["batch_score"].to_kwargs() == {"cron": "0 6 * * *"}
    assert schedules["tune"].to_kwargs() == {"interval": 604800.0}


@pytest.mark.parametrize(
    ("crons", "intervals", "message"),
    [
        (["0 6 * * *"], [], "expected FLOW=VALUE"),
        (["score=0 6 * * *"], [], "FLOW one of tune, batch_score"),
        (["batch_score=every day"], [], "not a cron expression"),
        ([], ["tune=-5"], "positive number of seconds"),
        ([], ["tune=weekly"], "positive number of seconds"),
        (["tune=0 3 * * 1"], ["tune=60"], "tune already has a schedule"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(crons, intervals, message):
    with pytest.raises(UserError, match=message):
        deployments.parse_schedules(crons, intervals)


def test_deployments_reference_installed_modules_and_carry_pool_settings(tmp_path):
    settings = deployments.DeploySettings(
        flows=("tune", "batch_score"),
        parameters={"batch_score": {"input_root": "/data/in"}},
        schedules=deployments.parse_schedules(["batch_score=0 6 * * *"], []),
        working_dir=tmp_path,
    )
    tune, score = deployments.build(settings, on_pool=True)
    assert (score.entrypoint, tune.entrypoint) == (
        "mlpipe.batch.flow.batch_score",
        "mlpipe.tune.flows.tune",
    )
    assert score.work_pool_name == "mlpipe-process"
    assert score.job_variables == {"working_dir": str(tmp_path)}
    assert score.parameters == {"input_root": "/data/in"}
    assert score.schedules[0].schedule.cron == "0 6 * * *" and not tune.schedules
    k8s = deployments.DeploySettings(
        flows=("batch_score",),
        parameters={},
        pool="k8s",
        kubernetes=deployments.KubernetesJob("mlpipe:1", "ml", "500m", "2", "1Gi", "4Gi"),
    )
    (job,) = deployments.build(k8s, on_pool=True)
    assert job.job_variables == {
        "image": "mlpipe:1",
        "namespace": "ml",
        "cpu_request": "500m",
        "cpu_limit": "2",
        "memory_request": "1Gi",
        "memory_limit": "4Gi",
    }


def test_the_kubernetes_template_takes_every_job_variable_we_set():
    template = deployments.base_job_template("kubernetes")
    variables = set(template["variables"]["properties"])
    assert {"image", "namespace", "cpu_request", "memory_limit"} <= variables
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"]["requests"]["cpu"] == "{{ cpu_request }}"
    assert "working_dir" in deployments.base_job_template("process")["variables"]["properties"]


def test_a_docker_pools_runs_see_the_hosts_folders_at_the_same_paths(tmp_path, monkeypatch):
    """Local roots and a SQLite store's folder are mounted where they are on the host, once
    each (a folder inside another rides on its mount); S3 roots and server URIs are not
    folders; runs start in the working folder, as its owner."""
    monkeypatch.chdir(tmp_path)
    container = deployments.docker_container(
        "mlpipe:1", tmp_path, "data/incoming", "s3://bucket/scored",
        "sqlite:////" + str(tmp_path / "store" / "mlflow.db").lstrip("/"),
    )  # fmt: skip
    variables = container.job_variables()
    assert variables["image"] == "mlpipe:1"
    assert variables["volumes"] == [f"{tmp_path}:{tmp_path}"]  # both local folders are inside
    assert (tmp_path / "data" / "incoming").is_dir() and (tmp_path / "store").is_dir()
    owner = tmp_path.stat()
    assert variables["container_create_kwargs"] == {
        "working_dir": str(tmp_path), "user": f"{owner.st_uid}:{owner.st_gid}",
        "entrypoint": ""}  # fmt: skip
    assert variables["env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert variables["auto_remove"] is True
    elsewhere = tmp_path / "elsewhere"
    other = deployments.docker_container(
        "mlpipe:1", tmp_path / "work", str(elsewhere / "in"), str(elsewhere / "out"),
        "http://127.0.0.1:5000",
    )  # fmt: skip
    (tmp_path / "work").mkdir()
    assert sorted(other.job_variables()["volumes"]) == sorted(
        f"{p}:{p}" for p in (tmp_path / "work", elsewhere / "in", elsewhere / "out")
    )
    assert other.job_variables()["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    template = deployments.base_job_template("docker")["variables"]["properties"]
    assert set(variables) <= set(template)  # every variable we set, prefect-docker takes


def test_deploy_apply_to_a_docker_pool_checks_the_image_and_daemon_first(tmp_path):
    from typer.testing import CliRunner

    from mlpipe.cli import app

    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "DOCKER_HOST": f"unix://{tmp_path}/no"}
    for args, expected in (
        (["--pool-type", "docker"], "--pool-type docker needs --image"),
        (["--pool-type", "docker", "--image", "mlpipe:1"], "no Docker daemon answers at unix://"),
        (["--pool-type", "lambda"], "expected one of process, docker, kubernetes"),
    ):
        result = CliRunner().invoke(app, ["deploy", "apply", *args], env=env)
        assert result.exit_code == 2, result.output
        assert expected in result.output and len(result.output.strip().splitlines()) == 1


def test_prefect_yaml_declares_the_same_deployments_as_mlpipe_deploy():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    by_entrypoint = {}
    for d in config["deployments"]:
        by_entrypoint.setdefault(d["entrypoint"], []).append(d)
    assert set(by_entrypoint) == set(deployments.FLOW_ENTRYPOINTS.values())
    defaults = {
        name: p.default
        for name, p in inspect.signature(batch_score.fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for flow, entrypoint in deployments.FLOW_ENTRYPOINTS.items():
        main = by_entrypoint[entrypoint][0]
        assert main["name"] == deployments.DEPLOYMENT_NAME
        assert main["work_pool"]["name"] == deployments.DEFAULT_POOL
        assert main["tags"] == deployments.TAGS
        assert main["description"] == f"mlpipe {flow} ({entrypoint})"
    for d in by_entrypoint[deployments.FLOW_ENTRYPOINTS["batch_score"]]:
        for key, value in d["parameters"].items():
            assert defaults[key] == value, key
    declared = by_entrypoint[deployments.FLOW_ENTRYPOINTS["batch_score"]][0]["triggers"]
    created = triggers.batch_score_triggers("boston-rf")
    assert [(t["name"], set(t["expect"]), t["match"], t["parameters"]) for t in declared] == [
        (t.name, t.expect, t.match.model_dump(), t.parameters) for t in created
    ]
    (sensor,) = by_entrypoint[deployments.FLOW_ENTRYPOINTS["watch_incoming"]]
    window = triggers.SENSOR_WINDOW_SECONDS
    assert sensor["schedules"] == [{"interval": window}]  # what `deploy triggers` creates
    parameters = triggers.sensor_parameters(triggers.SENSOR_POLL_SECONDS, window)
    assert parameters.items() <= sensor["parameters"].items()
    (k8s,) = [d for d in config["deployments"] if d["name"] == "mlpipe-k8s"]
    template = deployments.base_job_template("kubernetes")["variables"]["properties"]
    assert set(k8s["work_pool"]["job_variables"]) <= set(template)


def test_the_sensor_watches_for_its_window_and_stops_a_look_before_the_next_run():
    assert triggers.sensor_parameters(60, 3600) == {"poll_seconds": 60, "watch_seconds": 3540}
    assert triggers.sensor_parameters(60, 60) == {"poll_seconds": 60, "watch_seconds": 0}
    for poll, window in ((0, 3600), (-1, 3600), (120, 60)):
        with pytest.raises(UserError, match="--sensor-window"):
            triggers.sensor_parameters(poll, window)


def test_partitions_are_relative_folder_names():
    paths = partition_paths("date=2026-11-22", "in", "out")
    assert paths.input == "in/date=2026-11-22"
    assert paths.output == "out/date=2026-11-22/predictions.parquet"
    assert paths.rejects == "out/date=2026-11-22/rejects.parquet"
    assert paths.report == "out/date=2026-11-22/drift_report.html"
    assert partition_paths("region=eu/date=2026-11-22", "in", "out").input == (
        "in/region=eu/date=2026-11-22"
    )
    on_s3 = partition_paths("date=2026-11-22", "s3://team/in", "s3://team/out/")
    assert on_s3.input == "s3://team/in/date=2026-11-22"
    assert on_s3.output == "s3://team/out/date=2026-11-22/predictions.parquet"
    for bad in ("../etc", "/abs", "", "date=2026-11-22/..", "a b"):
        with pytest.raises(UserError, match="relative folder name"):
            partition_paths(bad, "in", "out")


def test_date_partitions_include_both_ends():
    assert date_partitions(date(2026, 11, 30), date(2026, 12, 2)) == [
        "date=2026-11-30",
        "date=2026-12-01",
        "date=2026-12-02",
    ]
    with pytest.raises(UserError, match="before --start"):
        date_partitions(date(2026, 12, 2), date(2026, 11, 30))


def test_the_stack_trusts_a_pid_only_while_its_start_time_matches(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        started = start_time(child.pid)
        # the format pid files have always recorded: /proc/PID/stat's start time, in ticks
        stat = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert started == stat[19]
        live = stack.Service("prefect", child.pid, started, "u", "h", "l")
        reused = stack.Service("prefect", child.pid, "1", "u", "h", "l")  # same pid, other start
        assert live.running() and not reused.running()
        recorded = stack.Stack(str(tmp_path), [live], "pool")
        recorded.save()
        assert stack.Stack.load(tmp_path) == recorded
        assert stack.active({"MLPIPE_HOME": str(tmp_path)}) == recorded
        assert stack.down(recorded, grace=5) == [f"prefect (pid {child.pid})"]
        assert child.wait(timeout=5) is not None and not live.running()
        assert stack.Stack.load(tmp_path) is None
        assert stack.active({"MLPIPE_HOME": str(tmp_path)}) is None
    finally:
        child.kill()
        child.wait()


def test_the_state_folder_defaults_to_the_home_folder():
    assert stack.state_dir({}) == Path.home() / ".mlpipe"
    assert stack.state_dir({"MLPIPE_HOME": "/srv/mlpipe"}) == Path("/srv/mlpipe")
    assert os.environ["MLPIPE_HOME"] != str(Path.home() / ".mlpipe")  # tests never touch it


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("mlpipe.tune.tune", "mlpipe.tune.flows.tune"),
        ("mlpipe.tune.finalize_search", "mlpipe.tune.flows.finalize_search"),
        ("mlpipe.score_flow.batch_score", "mlpipe.batch.flow.batch_score"),
        ("mlpipe.score_flow.watch_incoming", "mlpipe.batch.flow.watch_incoming"),
    ],
)
def test_entrypoints_of_deployments_registered_by_earlier_versions_still_load(old, new):
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(old, use_placeholder_flow=False)
    assert flow is load_flow_from_entrypoint(new, use_placeholder_flow=False)
    assert new in {*deployments.FLOW_ENTRYPOINTS.values(), "mlpipe.tune.flows.finalize_search"}


def test_the_deployments_name_is_an_option_and_names_the_automations(tmp_path):
    from mlpipe.deploy import automations, triggers

    settings = deployments.DeploySettings(
        flows=("tune", "batch_score"), parameters={}, working_dir=tmp_path, name="nightly"
    )
    assert [d.name for d in deployments.build(settings, on_pool=True)] == ["nightly", "nightly"]
    default = deployments.DeploySettings(flows=("tune",), parameters={}, working_dir=tmp_path)
    assert [d.name for d in deployments.build(default, on_pool=True)] == ["mlpipe"]
    assert automations.AUTOMATION_NAME.format(name="mlpipe") == (
        "mlpipe: a deployment's flow run failed"  # the name earlier versions created
    )
    assert triggers.DRIFT_AUTOMATION.format(name="nightly") == "nightly: drift detected"


def test_schedules_are_described_as_a_person_reads_them():
    from datetime import timedelta

    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    prefect_ones = [CronSchedule(cron="0 6 * * *"), IntervalSchedule(interval=timedelta(hours=1))]
    assert deployments._describe(prefect_ones) == "cron '0 6 * * *', every 3600s"
    ours = deployments.parse_schedules(["tune=0 3 * * 1"], ["batch_score=600"])
    assert deployments._describe([ours["tune"], ours["batch_score"]]) == (
        "cron '0 3 * * 1', every 600s"
    )


def test_backfill_reads_every_runs_summary_in_pages_the_api_answers():
    """A year of partitions: the summaries come back 200 at a time (the API's cap)."""
    import json
    from types import SimpleNamespace
    from uuid import uuid4

    from mlpipe.deploy.backfill import PartitionStatus, _read_summaries

    statuses = [
        PartitionStatus(f"date=d{i}", "run", flow_run_id=str(uuid4()), state="Completed")
        for i in range(450)
    ]

    class Client:
        def __init__(self) -> None:
            self.pages: list[int] = []

        def read_artifacts(self, artifact_filter, limit):
            ids = artifact_filter.flow_run_id.any_
            assert artifact_filter.key.any_ == ["batch-score-summary"] and len(ids) <= limit
            self.pages.append(len(ids))
            row = {"rows": 506, "drift": "none"}
            return [SimpleNamespace(flow_run_id=i, data=json.dumps([row])) for i in ids]

    client = Client()
    _read_summaries(client, statuses)
    assert client.pages == [200, 200, 50]
    assert {(s.rows, s.drift) for s in statuses} == {(506, "none")}
