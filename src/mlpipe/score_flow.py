"""The ``batch_score`` Prefect flow: score one partition of the incoming data.

A partition is a folder name under the input root, such as ``date=2026-11-22``:
``INPUT_ROOT/date=2026-11-22/`` (CSV or Parquet files) is scored into
``OUTPUT_ROOT/date=2026-11-22/predictions.parquet`` (and ``rejects.parquet`` beside it when rows
were rejected). The flow takes only JSON-able parameters, so a deployment, a schedule or a
backfill can start it. The scoring itself is ``batch.score``; this module adds retries, logging
and a summary artifact in the Prefect UI.

Retries are for what may pass on a second try (the tracking server briefly away, a file system
hiccup); an input that breaks the contract fails at once with the reason as the state message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from mlpipe.errors import UserError

PREDICTIONS_FILE = "predictions.parquet"
REJECTS_FILE = "rejects.parquet"
DEFAULT_MODEL = "models:/boston-rf@champion"
_PARTITION_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")


@dataclass(frozen=True)
class PartitionPaths:
    """Where one partition is read from and written to."""

    partition: str
    input: Path
    output: Path
    rejects: Path


def partition_paths(partition: str, input_root: str, output_root: str) -> PartitionPaths:
    """The input folder and output files of ``partition`` (a relative folder name)."""
    parts = PurePosixPath(partition).parts
    if not parts or not all(_PARTITION_PART.match(p) for p in parts):
        raise UserError(
            f"partition {partition!r}: expected a relative folder name such as date=2026-11-22 "
            "(letters, digits, '_', '-', '.', '='; no '..' or absolute paths)"
        )
    folder = Path(output_root, *parts)
    return PartitionPaths(
        partition, Path(input_root, *parts), folder / PREDICTIONS_FILE, folder / REJECTS_FILE
    )


def date_partitions(start: date, end: date, key: str = "date") -> list[str]:
    """``key=YYYY-MM-DD`` for every day from ``start`` to ``end``, both included."""
    if end < start:
        raise UserError(f"--end {end} is before --start {start}")
    return [f"{key}={start + timedelta(days=i)}" for i in range((end - start).days + 1)]


def _not_a_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the input itself is wrong (retrying cannot fix that)."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # anything else may be transient: let Prefect retry it
        return True
    return True


@task(
    name="score-partition",
    cache_policy=NONE,
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_not_a_user_error,
)
def score_partition(
    paths: PartitionPaths,
    model: str,
    tracking_uri: str,
    id_columns: list[str],
    max_rejects: int | None,
) -> dict[str, Any]:
    """Load the model (an alias resolves to its version now) and score one partition."""
    from mlpipe import batch
    from mlpipe.predictor import open_model

    logger = get_run_logger()
    loaded = open_model(model, tracking_uri)
    logger.info(
        "scoring %s with %s version %s (%s predictor)",
        paths.input,
        loaded.ref.name or loaded.ref.uri,
        loaded.version,
        loaded.predictor.kind,
    )
    summary = batch.score(
        loaded,
        paths.input,
        paths.output,
        id_columns=id_columns,
        max_rejects=max_rejects,
        rejects=paths.rejects,
    )
    return summary.to_dict()


def scheduled_partition(lag_days: int) -> str:
    """``date=...`` of this run's scheduled day minus ``lag_days`` (a run scheduled for
    2026-11-23 06:00 with lag 1 scores date=2026-11-22, the day that has just ended)."""
    from prefect.runtime import flow_run

    return f"date={flow_run.scheduled_start_time.date() - timedelta(days=lag_days)}"


@flow(name="batch_score", log_prints=False)
def batch_score(
    partition: str | None = None,
    lag_days: int = 1,
    model: str = DEFAULT_MODEL,
    input_root: str = "data/incoming",
    output_root: str = "data/scored",
    id_columns: list[str] | None = None,
    max_rejects: int | None = 1000,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score ``input_root/partition/`` into ``output_root/partition/predictions.parquet``;
    without a partition (scheduled runs), the scheduled day minus ``lag_days``."""
    from mlpipe.tracking import resolve_tracking_uri

    partition = partition or scheduled_partition(lag_days)
    paths = partition_paths(partition, input_root, output_root)
    summary = score_partition(
        paths, model, tracking_uri or resolve_tracking_uri(), id_columns or [], max_rejects
    )
    get_run_logger().info(
        "%s: %d rows, %d scored, %d rejected, %.0f rows/s -> %s",
        partition,
        summary["rows"],
        summary["scored"],
        summary["rejected"],
        summary["rows_per_second"],
        summary["output"],
    )
    create_markdown_artifact(
        key="batch-score-summary",
        markdown="\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary.items())]),
        description=f"batch_score {partition}",
    )
    return summary
