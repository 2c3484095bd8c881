"""Backfill: one ``batch_score`` flow run per missing date partition, through the deployment.

The deployment's own parameters say where partitions are read and written, so the backfill
checks the same folders the runs will use. Partitions whose output exists are skipped unless
``force``; partitions without input are reported, not run. Runs are created through the Prefect
API (a worker or ``mlpipe deploy serve`` executes them) and watched until each is final; each
finished run's rows and drift verdict come from the summary table artifact it published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from mlpipe.batch import locations
from mlpipe.batch.flow import SUMMARY_ARTIFACT, partition_paths
from mlpipe.batch.objects import is_s3
from mlpipe.deploy.deployments import DEPLOYMENT_NAME
from mlpipe.errors import UserError
from mlpipe.settings import DEFAULT_INPUT_ROOT, DEFAULT_OUTPUT_ROOT

_PAGE = 200


@dataclass
class PartitionStatus:
    """One row of the backfill's table."""

    partition: str
    action: str  # run | skipped (output exists) | no input
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    state: str | None = None
    message: str | None = None
    rows: int | None = None  # from the run's summary artifact
    drift: str | None = None


def plan(
    partitions: list[str], parameters: dict[str, Any], force: bool, base: Path
) -> list[PartitionStatus]:
    """What to do with each partition, from the deployment's input and output roots."""
    input_root = _root(parameters.get("input_root", DEFAULT_INPUT_ROOT), base)
    output_root = _root(parameters.get("output_root", DEFAULT_OUTPUT_ROOT), base)
    statuses = []
    for partition in partitions:
        paths = partition_paths(partition, input_root, output_root)
        if locations.exists(paths.output) and not force:
            statuses.append(
                PartitionStatus(partition, "skipped", message="output exists (--force rescores)")
            )
        elif not _has_files(paths.input):
            statuses.append(
                PartitionStatus(partition, "no input", message=f"no input files at {paths.input}")
            )
        else:
            statuses.append(PartitionStatus(partition, "run"))
    return statuses


def _root(root: str | Path, base: Path) -> str:
    """A deployment's root: an S3 URL as it is, a local folder relative to ``base``."""
    root = str(root)
    return root if is_s3(root) else str(base / root)


def _has_files(folder: str) -> bool:
    from mlpipe.errors import DataError

    try:
        return bool(locations.data_files(folder).files)
    except DataError:
        return False


def backfill(
    partitions: list[str],
    force: bool = False,
    wait: bool = True,
    timeout: float = 3600.0,
    deployment: str = DEPLOYMENT_NAME,
    base: Path | None = None,
) -> list[PartitionStatus]:
    """Create a flow run of ``batch_score/<deployment>`` for each partition to (re)score."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        full_name = f"batch_score/{deployment}"
        try:
            found = client.read_deployment_by_name(full_name)
        except ObjectNotFound:
            raise UserError(
                f"no deployment {full_name} on the Prefect API; create it with "
                "`mlpipe deploy apply` (or `mlpipe deploy serve`)"
            ) from None
        statuses = plan(partitions, dict(found.parameters), force, base or Path.cwd())
        for status in statuses:
            if status.action != "run":
                continue
            run = client.create_flow_run_from_deployment(
                found.id,
                parameters={"partition": status.partition},
                tags=["backfill"],
            )
            status.flow_run_id, status.flow_run_name = str(run.id), run.name
            status.state = run.state.name if run.state else "Scheduled"
        if wait:
            started = [s for s in statuses if s.flow_run_id]
            _wait(client, started, timeout)
            _read_summaries(client, started)
    return statuses


def _read_summaries(client: Any, statuses: list[PartitionStatus]) -> None:
    """Each run's rows and drift verdict, from the one-row table artifact it published."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    by_run = {UUID(s.flow_run_id): s for s in statuses if s.flow_run_id}
    ids = list(by_run)
    found = []
    for start in range(0, len(ids), _PAGE):  # the API answers at most 200 a request
        found += client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT]),
                flow_run_id=ArtifactFilterFlowRunId(any_=ids[start : start + _PAGE]),
            ),
            limit=_PAGE,
        )
    for artifact in found:
        table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if artifact.flow_run_id in by_run and isinstance(table, list) and table:
            status = by_run[artifact.flow_run_id]
            status.rows, status.drift = table[0].get("rows"), table[0].get("drift")


def _wait(client: Any, statuses: list[PartitionStatus], timeout: float) -> None:
    """Wait for the runs with Prefect's own ``wait_for_flow_run`` (it follows their state
    events), all at once; a run not finished within ``timeout`` says so."""
    import asyncio

    from prefect.exceptions import FlowRunWaitTimeout
    from prefect.flow_runs import wait_for_flow_run

    async def follow(status: PartitionStatus) -> None:
        try:
            run: Any = await wait_for_flow_run(UUID(status.flow_run_id), timeout=int(timeout))
        except FlowRunWaitTimeout:
            state = client.read_flow_run(status.flow_run_id).state
            status.state = state.name if state else None
            status.message = f"still {status.state} after {timeout:.0f}s; is a worker running?"
            return
        status.state = run.state.name if run.state else None
        if run.state is not None and not run.state.is_completed():
            status.message = run.state.message

    async def follow_all() -> None:
        await asyncio.gather(*(follow(status) for status in statuses))

    asyncio.run(follow_all())
