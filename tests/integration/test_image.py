"""The images, built and run for real: `make image` builds the full image and the serving image
(on a stand-in base where python:3.11-slim-bookworm cannot be pulled); inside them, as their
non-root user, `mlpipe train` against the session's MLflow server outside the container,
`mlpipe serve` from the registry (both images, the HEALTHCHECK too), `mlpipe score` on a mounted
file, the stream handler on an AWS-shaped event; and a Docker work pool whose real worker runs
`tune` and `batch_score` flow runs in containers of the image.

Containers use the host's network: the servers they reach listen on loopback, as every test
server does (prefect-docker does the same for a loopback Prefect API)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    ONE_AT_A_TIME,
    api,
    boston,
    prefect_worker,
    run_mlpipe,
    wait_final,
)

from mlpipe.processes import free_port

# the serving test loads MLflow's pyfunc from the session's server: MLflow's global URIs
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]
ROOT = Path(__file__).parents[2]
IMAGE, SERVE_IMAGE = "mlpipe:0.1.0", "mlpipe-serve:0.1.0"  # the Makefile's names
MODEL = "image-rf"
GRID = {"n_estimators": [10], "max_depth": [4, None]}
# the owner of the docker pool test's project folder: a user neither root nor the image's
USER = 4242 if os.geteuid() == 0 else os.geteuid()
SEQUENCE = "49590338271490256608559692538361571095921575989136588"  # + 3 digits: Kinesis' 56


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def images(image_build: Path) -> dict[str, str]:
    """`make image`, as a user runs it: both images (cached layers make a rerun cheap), on a
    Docker daemon that answers, or Debian's docker.io started as root (conftest: image_build,
    begun with the run's first integration test; the daemon stopped by pid at the run's end).
    Skips without a daemon (CI: fails)."""
    rc = image_build / "rc"
    deadline = time.monotonic() + 1500
    while not rc.is_file():
        assert time.monotonic() < deadline, "make image ran over 25 min"
        time.sleep(1)
    status, log = int(rc.read_text()), (image_build / "build.log").read_text()
    if status == 77:
        message = log.strip().splitlines()[-1]
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    assert status == 0, log[-6000:]
    return {"full": IMAGE, "serve": SERVE_IMAGE}


def run_in(
    image: str, *args: str, env: dict[str, str], mounts: dict[Path, str] | None = None,
    entrypoint: str | None = None, timeout: float = 300,
) -> subprocess.CompletedProcess:  # fmt: skip
    """``docker run`` on the host's network as the image's user; ``mounts``: host folder ->
    container path."""
    options = ["--rm", "--network", "host"]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    for source, target in (mounts or {}).items():
        options += ["--volume", f"{source}:{target}"]
    if entrypoint:
        options += ["--entrypoint", entrypoint]
    return docker("run", *options, image, *args, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def trained_in_image(images, servers, tmp_path_factory) -> dict:
    """`mlpipe train` inside the full image: a small grid, its flow runs on the session's Prefect
    server, tracked and registered in the session's MLflow server (both outside the container)."""
    specs = tmp_path_factory.mktemp("image-spec")
    spec = {**ONE_AT_A_TIME, "search": {"params": GRID}, "tracking": {"experiment": MODEL},
            "registry": {"model_name": MODEL}}  # fmt: skip
    (specs / "spec.yaml").write_text(yaml.safe_dump(spec))
    specs.chmod(0o755)  # readable by the image's user (pytest's folders are the runner's only)
    env = {k: servers[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    done = run_in(IMAGE, "train", "--config", "/specs/spec.yaml", env=env,
                  mounts={specs: "/specs:ro"})  # fmt: skip
    return {"done": done, "env": env}


def test_train_in_the_image_registers_in_the_mlflow_server_outside(trained_in_image, servers):
    from mlflow import MlflowClient

    done = trained_in_image["done"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = MlflowClient(servers["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_rmse"] > 0
    assert "/home/mlpipe" not in run.info.artifact_uri  # the server's artifact store, not the box's


def test_the_images_run_as_their_non_root_user(images):
    for image in images.values():
        who = run_in(image, "-c", "import os; print(os.getuid(), os.getgid())", env={},
                     entrypoint="python")  # fmt: skip
        assert who.stdout.split() == ["10001", "10001"], who.stderr


@pytest.mark.parametrize("which", ["serve", "full"])
def test_serve_from_the_registry_answers_ready_and_predict_and_is_healthy(
    which, images, trained_in_image, servers
):
    """Both images serve the champion; the image's own HEALTHCHECK (at a 1 s interval) turns
    healthy; the predictions equal MLflow's pyfunc of the same version on the host (the
    serving image: through the ONNX fast path, with neither scikit-learn nor pyarrow)."""
    import mlflow.pyfunc

    assert trained_in_image["done"].returncode == 0
    port = free_port()
    name = f"mlpipe-test-{uuid.uuid4().hex[:8]}"
    docker("run", "--detach", "--rm", "--name", name, "--network", "host",
           "--env", f"MLFLOW_TRACKING_URI={servers['MLFLOW_TRACKING_URI']}",
           "--env", f"MLPIPE_PORT={port}",
           "--health-interval", "1s", "--health-start-period", "60s",
           images[which], "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", f"models:/{MODEL}@champion")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            logs = docker("logs", name, check=False)
            assert time.monotonic() < deadline, logs.stdout[-2000:] + logs.stderr[-2000:]
            time.sleep(0.3)
        X, _ = boston()
        rows = X.head(20)
        answer = httpx.post(f"{url}/predict", json=rows.to_dict(orient="records"), timeout=10)
        assert answer.status_code == 200, answer.text
        mlflow.set_tracking_uri(servers["MLFLOW_TRACKING_URI"])
        expected = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(rows)
        np.testing.assert_allclose(answer.json()["predictions"], expected, rtol=1e-5)
        assert httpx.get(f"{url}/version").text == mlflow.__version__  # MLflow's client reads it
        parquet = httpx.post(
            f"{url}/invocations", content=rows.to_parquet(), timeout=10,
            headers={"Content-Type": "application/vnd.apache.parquet"},
        )  # fmt: skip
        if which == "serve":  # no pyarrow in the serving image: a 415 that says what to send
            assert parquet.status_code == 415 and "text/csv" in parquet.text, parquet.text
        else:
            assert parquet.json()["predictions"] == answer.json()["predictions"]
        while (health := docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout
               .strip()) == "starting":  # fmt: skip
            assert time.monotonic() < deadline + 30
            time.sleep(0.5)
        assert health == "healthy"
    finally:
        docker("rm", "--force", name, check=False)


def test_score_in_the_image_on_a_mounted_file(images, trained_in_image, servers, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)  # the image's user writes the output here
    X, _ = boston()
    X.head(100).to_csv(data / "houses.csv", index=False)
    done = run_in(IMAGE, "score", "--model", f"models:/{MODEL}@champion", "--input",
                  "/data/houses.csv", "--output", "/data/out/predictions.parquet",
                  env={"MLFLOW_TRACKING_URI": servers["MLFLOW_TRACKING_URI"]},
                  mounts={data: "/data"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    scored = pd.read_parquet(data / "out" / "predictions.parquet")
    assert len(scored) == 100 and scored["prediction"].notna().all()


def test_the_stream_handler_in_the_image_on_a_kinesis_event(
    images, trained_in_image, servers, aws_endpoint, new_streams, client
):
    """``mlpipe.stream.lambda_handler`` in the full image, configured as a Lambda function is
    (environment), on an event of AWS's documented Kinesis shape; its predictions land on the
    output stream (moto's Kinesis and DynamoDB on loopback)."""
    import boto3

    from mlpipe.stream import kinesis
    from mlpipe.stream.ledger import DynamoLedger
    from mlpipe.stream.local import LOCAL_CREDENTIALS

    output, = new_streams("image-out")  # fmt: skip
    table = f"image-ledger-{uuid.uuid4().hex[:8]}"
    dynamodb = boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1")
    DynamoLedger.create_table(dynamodb, table)
    X, _ = boston()
    records = [
        {"eventSource": "aws:kinesis", "eventName": "aws:kinesis:record",
         "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/in",
         "eventID": f"shardId-000000000000:{i}", "awsRegion": "us-east-1",
         "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": str(i),
                     "sequenceNumber": f"{SEQUENCE}{i:03d}", "approximateArrivalTimestamp": 1.7e9,
                     "data": base64.b64encode(json.dumps(
                         {"id": f"house-{i}", **X.iloc[i].to_dict()}).encode()).decode()}}
        for i in range(5)
    ]  # fmt: skip
    env = {**LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL": aws_endpoint, "AWS_REGION": "us-east-1",
           "MLFLOW_TRACKING_URI": servers["MLFLOW_TRACKING_URI"],
           "MLPIPE_MODEL_URI": f"models:/{MODEL}@champion", "MLPIPE_OUTPUT_STREAM": output,
           "MLPIPE_IDEMPOTENCY_TABLE": table}  # fmt: skip
    code = ("import json, sys; from mlpipe.stream import lambda_handler\n"
            "class Context:\n    def get_remaining_time_in_millis(self): return 60000\n"
            "print(json.dumps(lambda_handler(json.loads(sys.argv[1]), Context())))")  # fmt: skip
    done = run_in(IMAGE, "-c", code, json.dumps({"Records": records}), env=env,
                  entrypoint="python")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"batchItemFailures": []}
    written = [json.loads(r["Data"]) for r in kinesis.read(client, output)]
    assert sorted(r["id"] for r in written) == [f"house-{i}" for i in range(5)]
    assert {r["model_name"] for r in written} == {MODEL}


def test_a_docker_pool_runs_tune_and_batch_score_in_containers(
    images, trained_in_image, servers, tmp_path
):
    """`mlpipe deploy apply --pool-type docker`: a real `prefect worker start --type docker`
    picks up runs created through the API and runs each in a container of the image, whose
    output lands in the host's folders (mounted at the same paths)."""
    project = tmp_path / "project"
    incoming = project / "data" / "incoming" / "date=2026-11-22"  # the default roots
    incoming.mkdir(parents=True)
    (project / "data" / "scored").mkdir()
    X, _ = boston()
    X.head(50).to_parquet(incoming / "part-0.parquet")
    spec = {**ONE_AT_A_TIME, "search": {"params": {"n_estimators": [5], "max_depth": [3]}},
            "tracking": {"experiment": "image-pool"},
            "registry": {"model_name": "image-pool"}}  # fmt: skip
    (project / "spec.yaml").write_text(yaml.safe_dump(spec))
    for path in (project, *project.rglob("*")) if os.geteuid() == 0 else ():
        os.chown(path, USER, USER)
    env = {k: servers[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    pool = f"docker-{uuid.uuid4().hex[:6]}"
    applied = run_mlpipe(["deploy", "apply", "--pool-type", "docker", "--image", IMAGE,
                          "--pool", pool, "--config", "spec.yaml", "--name", pool,
                          "--model", f"models:/{MODEL}@champion"], project, **env)  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"prefect worker start --pool {pool} --type docker" in applied.stdout
    project_api = {"api": servers["PREFECT_API_URL"]}
    log = tmp_path / "worker.log"  # not in the project, whose every file is the user's
    with prefect_worker(pool, project, env, kind="docker", log=log):
        runs = {}
        for flow, parameters in (("batch_score", {"partition": "date=2026-11-22"}),
                                 ("tune", {})):  # fmt: skip
            deployment = api(project_api, "GET", f"/deployments/name/{flow}/{pool}").json()
            created = f"/deployments/{deployment['id']}/create_flow_run"
            runs[flow] = api(project_api, "POST", created,
                             json={"parameters": parameters}).json()["id"]  # fmt: skip
        states = {flow: wait_final(project_api, run, seconds=420)["state"]["type"]
                  for flow, run in runs.items()}  # fmt: skip
        assert states == {"batch_score": "COMPLETED", "tune": "COMPLETED"}, (
            states, log.read_text()[-4000:])  # fmt: skip
    scored = pd.read_parquet(project / "data/scored/date=2026-11-22/predictions.parquet")
    assert len(scored) == 50
    from mlflow import MlflowClient

    version = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "image-pool", "champion"
    )
    assert version.version == "1"
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in project.rglob("*")}
    assert owners == {(USER, USER)}  # the runs wrote as the folder's owner
    left = docker("ps", "--all", "--filter", "label=io.prefect.flow-run-id", "--quiet").stdout
    assert not left.strip()  # auto_remove: no container left behind


def test_docker_pool_bad_input_exits_2_with_one_line(images, servers, tmp_path):
    env = {"PREFECT_API_URL": servers["PREFECT_API_URL"]}
    cases = {
        "needs --image": (["--pool-type", "docker"], {}),
        "no such image": (["--pool-type", "docker", "--image", "mlpipe:no-such-tag"], {}),
        "no Docker daemon": (["--pool-type", "docker", "--image", IMAGE],
                             {"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}),
    }  # fmt: skip
    for expected, (args, extra) in cases.items():
        done = run_mlpipe(["deploy", "apply", *args], tmp_path, **env, **extra)
        assert done.returncode == 2, done.stdout + done.stderr
        message = done.stderr.strip()
        assert expected in message and len(message.splitlines()) == 1, message


def test_make_image_again_is_all_cache(images):
    done = subprocess.run(["make", "image"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Using cache" in done.stdout and "Running in" not in done.stdout  # no step ran
