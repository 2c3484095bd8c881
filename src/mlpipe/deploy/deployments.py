"""mlpipe's Prefect deployments: ``tune/mlpipe``, ``batch_score/mlpipe`` and the sensor
``watch_incoming/mlpipe`` (event-driven runs: ``triggers.py``).

Two ways to run them, as Prefect has:
- static (``serve``): one long-lived process polls the API and runs the flows itself;
- dynamic (``apply``): the deployments are registered on a work pool, and any worker of that pool
  runs them: a process worker (``prefect worker start --pool mlpipe-process``), a Docker worker
  (each run in a container of the mlpipe image) or a Kubernetes worker (each run a Job).

The flows are referenced by module path (``mlpipe.batch.flow.batch_score``), so a worker needs
mlpipe installed (the project's venv, or its image) but no copy of the source tree. The same
definitions are written declaratively in the repository's ``prefect.yaml`` for ``prefect deploy
--all``; a unit test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpipe.errors import UserError
from mlpipe.settings import DEFAULT_POOL

DEPLOYMENT_NAME = "mlpipe"
POOL_TYPES = ("process", "docker", "kubernetes")
FLOW_ENTRYPOINTS = {
    "tune": "mlpipe.tune.flows.tune",
    "batch_score": "mlpipe.batch.flow.batch_score",
    "watch_incoming": "mlpipe.batch.flow.watch_incoming",
}
DEFAULT_FLOWS = ("tune", "batch_score")  # `deploy apply`; `deploy triggers` adds the sensor
CONCURRENCY = {"watch_incoming": 1}  # one sensor run at a time: each event is emitted once
TAGS = ["mlpipe"]


@dataclass(frozen=True)
class Schedule:
    """A cron expression or an interval in seconds for one flow."""

    cron: str | None = None
    interval: float | None = None

    def to_kwargs(self) -> dict[str, Any]:
        return {"cron": self.cron} if self.cron else {"interval": self.interval}


@dataclass(frozen=True)
class KubernetesJob:
    """Job variables of Prefect's kubernetes work pool (its default base job template)."""

    image: str
    namespace: str = "default"
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None

    def job_variables(self) -> dict[str, Any]:
        values = {
            "image": self.image,
            "namespace": self.namespace,
            "cpu_request": self.cpu_request,
            "cpu_limit": self.cpu_limit,
            "memory_request": self.memory_request,
            "memory_limit": self.memory_limit,
        }
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class DockerContainer:
    """Job variables of prefect-docker's work pool. A run sees what a process pool's run sees:
    the host folders it reads and writes (its working folder, local data roots, a SQLite
    store's folder) mounted at the same paths, its working folder the same, as the owner of
    that folder (Docker's ``--user $(id -u):$(id -g)`` for bind mounts: what it writes stays the
    user's). A loopback Prefect API puts the container on the host's network (prefect-docker),
    so loopback servers are reached as they are from the host."""

    image: str
    working_dir: Path
    mounts: tuple[Path, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def job_variables(self) -> dict[str, Any]:
        owner = self.working_dir.stat()
        folders = _outermost((self.working_dir, *self.mounts))
        return {
            "image": self.image,
            "volumes": [f"{folder}:{folder}" for folder in folders],
            # a user other than the image's has no home: Prefect's and mlpipe's go to /tmp
            "env": {"PREFECT_HOME": "/tmp/prefect", "MLPIPE_HOME": "/tmp/mlpipe", **dict(self.env)},
            "auto_remove": True,
            "container_create_kwargs": {
                "working_dir": str(self.working_dir),
                "user": f"{owner.st_uid}:{owner.st_gid}",
                # the worker's command is Prefect's (`prefect flow-run execute`), not an mlpipe
                # subcommand: the image's entrypoint (`mlpipe`) is set aside
                "entrypoint": "",
            },
        }


def _outermost(folders: Sequence[Path]) -> list[Path]:
    """Each folder once, none inside another of them (one bind mount covers it)."""
    unique = sorted({f.resolve() for f in folders}, key=lambda f: len(f.parts))
    kept: list[Path] = []
    for folder in unique:
        if not any(folder.is_relative_to(outer) for outer in kept):
            kept.append(folder)
    return kept


@dataclass(frozen=True)
class DeploySettings:
    """What ``mlpipe deploy`` was asked for (validated by ``parse_schedules`` and the CLI)."""

    flows: tuple[str, ...]
    parameters: dict[str, dict[str, Any]]  # per flow
    schedules: dict[str, Schedule] = field(default_factory=dict)
    name: str = DEPLOYMENT_NAME  # each flow's deployment is FLOW/NAME
    pool: str = DEFAULT_POOL
    working_dir: Path | None = None  # process pools: where flow runs start
    kubernetes: KubernetesJob | None = None  # set for a kubernetes pool
    docker: DockerContainer | None = None  # set for a docker pool
    triggers: dict[str, list[Any]] = field(default_factory=dict)  # per flow

    @property
    def pool_type(self) -> str:
        return "kubernetes" if self.kubernetes else "docker" if self.docker else "process"


def parse_schedules(crons: list[str], intervals: list[str]) -> dict[str, Schedule]:
    """``FLOW=CRON`` and ``FLOW=SECONDS`` options as one schedule per flow."""
    schedules: dict[str, Schedule] = {}
    for option, values in (("--cron", crons), ("--interval", intervals)):
        for value in values:
            flow, sep, spec = value.partition("=")
            if not sep or flow not in FLOW_ENTRYPOINTS or not spec.strip():
                example = "'batch_score=0 6 * * *'" if option == "--cron" else "tune=604800"
                raise UserError(
                    f"{option} {value!r}: expected FLOW=VALUE with FLOW one of "
                    f"{', '.join(FLOW_ENTRYPOINTS)} (e.g. {option} {example})"
                )
            if flow in schedules:
                raise UserError(f"{option} {value!r}: {flow} already has a schedule")
            if option == "--cron":
                from prefect.client.schemas.schedules import CronSchedule
                from pydantic import ValidationError

                try:  # Prefect's own check, now rather than at the API
                    CronSchedule(cron=spec)
                except ValidationError:
                    raise UserError(
                        f"--cron {value!r}: {spec!r} is not a cron expression "
                        "(five fields: minute hour day month weekday)"
                    ) from None
                schedules[flow] = Schedule(cron=spec)
            else:
                try:
                    seconds = float(spec)
                except ValueError:
                    seconds = 0.0
                if seconds <= 0:
                    raise UserError(f"--interval {value!r}: give a positive number of seconds")
                schedules[flow] = Schedule(interval=seconds)
    return schedules


def build(
    settings: DeploySettings, on_pool: bool, kept: Mapping[str, list[Any]] | None = None
) -> list[Any]:
    """One RunnerDeployment per flow; ``on_pool`` adds the work pool and its job variables;
    ``kept``: Prefect schedules to keep, for flows ``settings`` gives none (``apply``)."""
    from prefect.types.entrypoint import EntrypointType

    deployments = []
    for name in settings.flows:
        flow = _load_flow(name)
        schedule = settings.schedules.get(name)
        # by module path: runs import the installed mlpipe, with no flow code to fetch
        options: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH}
        if on_pool:
            options |= {
                "work_pool_name": settings.pool,
                "job_variables": _job_variables(settings),
            }
        deployments.append(
            flow.to_deployment(
                settings.name,
                parameters=settings.parameters.get(name, {}),
                tags=TAGS,
                description=f"mlpipe {name} ({FLOW_ENTRYPOINTS[name]})",
                triggers=settings.triggers.get(name),
                concurrency_limit=CONCURRENCY.get(name),
                **(schedule.to_kwargs() if schedule else {}),
                **({"schedules": kept[name]} if kept and name in kept else {}),
                **options,
            )
        )
    return deployments


def _load_flow(name: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(FLOW_ENTRYPOINTS[name])


def _job_variables(settings: DeploySettings) -> dict[str, Any]:
    if settings.kubernetes is not None:
        return settings.kubernetes.job_variables()
    if settings.docker is not None:
        return settings.docker.job_variables()
    return {"working_dir": str(settings.working_dir)} if settings.working_dir else {}


def ensure_pool(name: str, pool_type: str) -> str:
    """Create the work pool unless it exists (then its type must match); returns what it did."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type=pool_type, base_job_template=base_job_template(pool_type)
                )
            )
            return f"created work pool {name!r} ({pool_type})"
    if pool.type != pool_type:
        raise UserError(
            f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}; "
            "pick another --pool name"
        )
    return f"work pool {name!r} ({pool_type}) exists"


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The pool's base job template: Prefect's process template, prefect-docker's, or mlpipe's
    kubernetes one (``k8s.work_pool_template``: prefect-kubernetes' default made to pass
    restricted pod security)."""
    if pool_type == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool_type == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker.get_default_base_job_template()
    if pool_type == "kubernetes":
        from mlpipe.deploy.k8s import work_pool_template

        return work_pool_template()
    raise UserError(f"--pool-type {pool_type!r}: expected one of {', '.join(POOL_TYPES)}")


def apply(settings: DeploySettings) -> tuple[list[tuple[str, str]], list[str]]:
    """Register the deployments on their work pool: (full name, id) of each, and what became
    of the schedules an existing deployment of the same name had. A flow this command gives no
    schedule keeps its own (as `deploy apply --cron` set it, or a user in the UI); a schedule
    it does give replaces the old one, and says so."""
    kept: dict[str, list[Any]] = {}
    notes = []
    for flow, found in _current_schedules(settings).items():
        old, new = _describe(found), settings.schedules.get(flow)
        if new is None:
            kept[flow] = found
            notes.append(f"{flow}/{settings.name}: kept its schedule {old}")
        elif old != _describe([new]):
            notes.append(f"{flow}/{settings.name}: schedule {old} replaced by {_describe([new])}")
    deployments = build(settings, on_pool=True, kept=kept)
    return [(f"{d.flow_name}/{d.name}", str(d.apply())) for d in deployments], notes


def _current_schedules(settings: DeploySettings) -> dict[str, list[Any]]:
    """The schedules (Prefect's objects) of the deployments ``settings`` would replace."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, list[Any]] = {}
    with get_client(sync_client=True) as client:
        for flow in settings.flows:
            try:
                deployment = client.read_deployment_by_name(f"{flow}/{settings.name}")
            except ObjectNotFound:
                continue
            if deployment.schedules:
                found[flow] = [s.schedule for s in deployment.schedules]
    return found


def _describe(schedules: Sequence[Any]) -> str:
    """Schedules as a person reads them: cron '0 6 * * *', every 3600s."""
    parts = []
    for schedule in schedules:
        cron, interval = getattr(schedule, "cron", None), getattr(schedule, "interval", None)
        if cron:
            parts.append(f"cron '{cron}'")
        elif interval is not None:
            seconds = interval.total_seconds() if hasattr(interval, "total_seconds") else interval
            parts.append(f"every {seconds:g}s")
        else:
            parts.append(str(getattr(schedule, "rrule", schedule)))
    return ", ".join(parts)


def serve(settings: DeploySettings, limit: int | None = None) -> None:
    """Run the deployments in this process until it is stopped (Prefect's ``serve``)."""
    from prefect import serve as prefect_serve

    prefect_serve(*build(settings, on_pool=False), limit=limit)


def deploy_settings(
    flows: Sequence[str] | None,
    cron: list[str],
    interval: list[str],
    model: str,
    input_root: str | Path,
    output_root: str | Path,
    config: Path | None,
    tracking_uri: str,
    **pool: Any,
) -> DeploySettings:
    """What ``mlpipe deploy`` creates: the chosen flows with their parameters (absolute paths:
    runs start in other folders), schedules and pool settings."""
    from mlpipe.batch.locations import absolute
    from mlpipe.predictor import parse_model_uri
    from mlpipe.spec import load_spec

    chosen = tuple(flows or DEFAULT_FLOWS)
    unknown = [f for f in chosen if f not in FLOW_ENTRYPOINTS]
    if unknown:
        raise UserError(f"--flow {unknown[0]!r}: expected one of {', '.join(FLOW_ENTRYPOINTS)}")
    parse_model_uri(model)
    tracking_uri = absolute_tracking_uri(tracking_uri)
    parameters: dict[str, dict[str, Any]] = {
        "batch_score": {
            "model": model,
            "input_root": absolute(input_root),
            "output_root": absolute(output_root),
            "tracking_uri": tracking_uri,
        },
        "tune": {
            "spec": load_spec(config, {}).model_dump(mode="json"),
            "tracking_uri": tracking_uri,
        },
        "watch_incoming": {
            "input_root": absolute(input_root),
            "output_root": absolute(output_root),
        },
    }
    return DeploySettings(
        flows=chosen,
        parameters=parameters,
        schedules=parse_schedules(cron, interval),
        **pool,
    )


def docker_container(
    image: str, working_dir: Path, input_root: str, output_root: str, tracking_uri: str
) -> DockerContainer:
    """A docker pool's container: the local data roots and a SQLite store's folder mounted
    beside the working folder; the tracking URI in the environment too (MLflow's own
    variable, for anything in the run that reads it rather than the flow's parameter)."""
    from mlpipe.batch.locations import absolute

    tracking_uri = absolute_tracking_uri(tracking_uri)
    roots = [absolute(root) for root in (input_root, output_root)]
    mounts = [Path(root) for root in roots if "://" not in root]
    if tracking_uri.startswith("sqlite:///"):
        mounts.append(Path(tracking_uri.removeprefix("sqlite://")).parent)
    for folder in mounts:  # Docker would create a missing one, owned by root
        folder.mkdir(parents=True, exist_ok=True)
    return DockerContainer(
        image, working_dir, tuple(mounts), (("MLFLOW_TRACKING_URI", tracking_uri),)
    )


def absolute_tracking_uri(uri: str) -> str:
    """A relative SQLite path made absolute: runs start in other working directories."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri
