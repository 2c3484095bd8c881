"""`mlpipe up`, `status` and `down` as an AWS team runs them, with models and data on S3: three
real background processes on free loopback ports (MLflow's proxied artifacts on moto's S3
server, a real process too), found again by `mlpipe train`, `serve` and `score` and stopped by
pid; train, serve and the stream handler use that registry with no S3 credentials or endpoint of
their own; `mlpipe score` goes from S3 to S3, is killed during its upload and run again."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN, api, background, run_mlpipe

from mlpipe.deploy import stack as local
from mlpipe.processes import alive, free_port

pytestmark = pytest.mark.integration

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
MODEL = "models:/boston-rf@champion"


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def open_uploads(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3["client"].list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def put_parquet(s3, bucket: str, key: str, frame: pd.DataFrame) -> None:
    body = io.BytesIO()
    frame.to_parquet(body)
    s3["client"].put_object(Bucket=bucket, Key=key, Body=body.getvalue())


def test_up_with_s3_artifacts_then_train_serve_stream_score_s3_to_s3_down(
    tmp_path, s3, aws_endpoint, new_streams, restore_mlflow_uris
):
    bucket = s3["bucket"]()
    project = tmp_path / "project"
    project.mkdir()
    env = {"MLPIPE_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    # what train, serve and the handler get: no credentials, an S3 endpoint that is not there
    no_s3 = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": closed_port(),
    }
    home = tmp_path / "home"
    up_args = ["up", "--prefect-port", "0", "--mlflow-port", "0"]
    missing = run_mlpipe([*up_args, "--artifacts", f"s3://no-{bucket}/mlflow"], project, **env)
    assert missing.returncode == 2 and f"no bucket 'no-{bucket}'" in missing.stderr
    assert not (home / "stack.json").exists()  # nothing started
    pids: dict[str, int] = {}
    up = run_mlpipe([*up_args, "--artifacts", f"s3://{bucket}/mlflow"], project, **env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"MLflow artifacts in s3://{bucket}/mlflow" in up.stdout
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.startswith("export ")
        )
        assert set(exports) == {"PREFECT_API_URL", "MLFLOW_TRACKING_URI"}
        mlflow_url = exports["MLFLOW_TRACKING_URI"]
        state = json.loads((home / "stack.json").read_text())
        pids = {s["name"]: s["pid"] for s in state["services"]}
        assert set(pids) == {"prefect", "mlflow", "worker"}
        assert {p.name for p in (home / "logs").iterdir()} == {
            "prefect.log",
            "mlflow.log",
            "worker.log",
        }
        status = run_mlpipe(["status"], project, **env)
        assert status.returncode == 0 and status.stdout.count(" up ") == 3, status.stdout
        # MLflow's GenAI job runner is off: no huey consumers in the MLflow server's group
        assert not [cmd for cmd in group_commands(pids["mlflow"]) if "huey" in cmd]
        assert any("uvicorn" in cmd for cmd in group_commands(pids["mlflow"]))
        again = run_mlpipe(up_args, project, **env)
        assert again.returncode == 2 and "already running" in again.stderr

        # no PREFECT_API_URL / MLFLOW_TRACKING_URI given: train finds the stack
        (project / "spec.yaml").write_text(
            yaml.safe_dump({"search": {"params": {"n_estimators": [10], "max_depth": [4]}}})
        )
        train = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], project, **env, **no_s3)
        assert train.returncode == 0, train.stdout + train.stderr
        assert mlflow_url in train.stdout and not (project / "mlflow.db").exists()
        versions = httpx.get(f"{mlflow_url}/api/2.0/mlflow/registered-models/get",
                             params={"name": "boston-rf"}, timeout=10).json()  # fmt: skip
        assert versions["registered_model"]["aliases"][0]["alias"] == "champion"
        flows = api({"api": exports["PREFECT_API_URL"]}, "POST", "/flows/filter", json={}).json()
        assert "tune" in {f["name"] for f in flows}
        stored = keys(s3, bucket, "mlflow/")
        assert any(k.endswith("/MLmodel") for k in stored), stored
        assert any(k.endswith("model.onnx") for k in stored), stored

        # online: the registry's model through the MLflow server, no S3 access of its own
        port = free_port()
        args = [str(BIN / "mlpipe"), "serve", "--model", MODEL, "--port", str(port)]
        serve_env = {**os.environ, **no_s3, "MLFLOW_TRACKING_URI": mlflow_url}
        houses = pd.read_csv(BOSTON).drop(columns=["MEDV"])
        with background(args, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ready",
                        cwd=project, env=serve_env):  # fmt: skip
            answer = httpx.post(f"http://127.0.0.1:{port}/predict",
                                json=houses.iloc[:3].to_dict("records"), timeout=10)  # fmt: skip
        assert answer.status_code == 200, answer.text
        online = answer.json()["predictions"]

        # stream: the Lambda handler's cold start loads the same version from the registry
        stream_handler_loads_from_the_registry(mlflow_url, no_s3, aws_endpoint, new_streams)

        # batch: S3 in, S3 out; killed during its upload, then run again
        many = pd.concat([houses] * 1000, ignore_index=True)  # ~20 MiB out: 3 upload parts
        many.insert(0, "house", [uuid.uuid4().hex for _ in range(len(many))])
        put_parquet(s3, bucket, "in/date=2026-12-01/part-0.parquet", many.iloc[: len(many) // 2])
        put_parquet(s3, bucket, "in/date=2026-12-01/part-1.parquet", many.iloc[len(many) // 2 :])
        score_args = [str(BIN / "mlpipe"), "score", "-m", MODEL, "--id-column", "house", "--quiet",
                      "-i", f"s3://{bucket}/in/date=2026-12-01/",
                      "-o", f"s3://{bucket}/out/predictions.parquet"]  # fmt: skip
        score_env = {**os.environ, **env}  # the stack's registry, found as train found it
        killed = subprocess.Popen(score_args, cwd=project, env=score_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 120
        while "out/predictions.parquet" not in open_uploads(s3, bucket):
            assert killed.poll() is None, killed.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert not keys(s3, bucket, "out/")  # nothing appeared
        assert open_uploads(s3, bucket) == ["out/predictions.parquet"]  # what the kill left

        scored = subprocess.run(score_args, cwd=project, env=score_env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert scored.returncode == 0, scored.stdout + scored.stderr
        assert open_uploads(s3, bucket) == []  # the killed run's upload aborted
        body = s3["client"].get_object(Bucket=bucket, Key="out/predictions.parquet")["Body"]
        out = pd.read_parquet(io.BytesIO(body.read()))
        assert len(out) == len(many) and out["house"].tolist() == many["house"].tolist()
        np.testing.assert_allclose(out["prediction"].iloc[:3], online, rtol=1e-6)
    finally:
        down = run_mlpipe(["down"], project, **env)
    assert down.returncode == 0, down.stderr
    assert "stopped worker" in down.stdout
    assert pids and not [name for name, pid in pids.items() if alive(pid)]
    assert not (home / "stack.json").exists()
    assert local.active({"MLPIPE_HOME": str(home)}) is None
    status = run_mlpipe(["status"], project, **env)
    assert status.returncode == 3 and "mlpipe up" in status.stdout


def group_commands(leader: int) -> list[str]:
    """The command lines of the processes in ``leader``'s process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == leader:  # pgrp
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError):
            continue
    return found


def stream_handler_loads_from_the_registry(mlflow_url, no_s3, aws_endpoint, new_streams):
    import boto3
    from pytest import MonkeyPatch

    from mlpipe.stream import kinesis
    from mlpipe.stream.events import kinesis_event
    from mlpipe.stream.function import FunctionSettings, build_handler
    from mlpipe.stream.ledger import DynamoLedger

    source, output = new_streams("s3-in", "s3-out")
    dynamodb = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
    table = f"ledger-{uuid.uuid4().hex[:6]}"
    DynamoLedger.create_table(dynamodb, table)
    with MonkeyPatch.context() as patch:
        for name, value in no_s3.items():
            if not name.startswith("AWS_ACCESS") and not name.startswith("AWS_SECRET"):
                patch.setenv(name, value)  # Kinesis and DynamoDB keep the local credentials
        patch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
        settings = FunctionSettings(
            model_uri=MODEL,
            tracking_uri=mlflow_url,
            output_stream=output,
            idempotency_table=table,
            region="us-east-1",
        )
        handler = build_handler(settings)
        client = kinesis.client(aws_endpoint, "us-east-1")
        row = pd.read_csv(BOSTON).drop(columns=["MEDV"]).iloc[0].to_dict()
        kinesis.put_records(client, source, [(json.dumps({"id": "a", **row}).encode(), "a")])
        shard = kinesis.list_shards(client, source)[0]["ShardId"]
        iterator = client.get_shard_iterator(
            StreamName=source, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = client.get_records(ShardIterator=iterator)["Records"]
        arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s3-in"
        event = kinesis_event(records, shard, arn, "us-east-1")
        assert handler(event, None) == {"batchItemFailures": []}
        assert handler.model.version == "1"
        written = [json.loads(r["Data"]) for r in kinesis.read(client, output)]
        assert [w["id"] for w in written] == ["a"]
