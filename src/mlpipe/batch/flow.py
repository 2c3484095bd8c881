"""The ``batch_score`` Prefect flow: score one partition of the incoming data.

A partition is a folder name under the input root, such as ``date=2026-11-22``:
``INPUT_ROOT/date=2026-11-22/`` (CSV or Parquet files) is scored into
``OUTPUT_ROOT/date=2026-11-22/predictions.parquet`` (and ``rejects.parquet`` beside it when rows
were rejected, and ``drift_report.html`` when the model has a training profile). Either root may be
a local folder or an S3 prefix (``s3://BUCKET/PREFIX``; ``locations.py``). The flow takes only
JSON-able parameters, so a deployment, a schedule or a backfill can start it. The scoring itself is
``score.score``; this module adds retries, logging and a summary artifact in the Prefect UI, and
monitoring: the inputs and predictions are compared with the model version's training profile
(``drift.py``), the figures and an HTML report are logged to an MLflow run (experiment
``<model>-scoring``), and ``mlpipe.drift.detected`` is emitted when a threshold is crossed.
``partition="latest"`` scores the newest partition folder (what the promotion trigger asks for).

``watch_incoming`` is the sensor: a scheduled flow that looks at the input root every minute for an
hour and emits ``mlpipe.data.arrived`` once for each partition folder that has input files and no
predictions yet; a deployment trigger on that event starts ``batch_score`` for the partition
(``deploy/triggers.py``). One run an hour, not one a minute: Prefect's scheduler keeps at least an
hour of runs scheduled ahead, so a one-minute schedule fills the runs page with 60 of them.

Retries are for what may pass on a second try (the tracking server briefly away, a file system
hiccup); an input that breaks the contract fails at once with the reason as the state message.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from mlpipe import drift, drift_report
from mlpipe.batch import locations
from mlpipe.errors import DataError, UserError
from mlpipe.settings import DEFAULT_INPUT_ROOT, DEFAULT_MODEL_URI, DEFAULT_OUTPUT_ROOT, Settings

PREDICTIONS_FILE = "predictions.parquet"
REJECTS_FILE = "rejects.parquet"
LATEST = "latest"
REPORT_FILE = "drift_report.html"
SUMMARY_ARTIFACT = "batch-score-summary"  # a run's one-row table; backfill's table reads it
_PARTITION_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")


@dataclass(frozen=True)
class PartitionPaths:
    """Where one partition is read from and written to (local paths or S3 URLs)."""

    partition: str
    input: str
    output: str
    rejects: str
    report: str


def partition_paths(partition: str, input_root: str, output_root: str) -> PartitionPaths:
    """The input folder and output files of ``partition`` (a relative folder name)."""
    parts = PurePosixPath(partition).parts
    if not parts or not all(_PARTITION_PART.match(p) for p in parts):
        raise UserError(
            f"partition {partition!r}: expected a relative folder name such as date=2026-11-22 "
            "(letters, digits, '_', '-', '.', '='; no '..' or absolute paths)"
        )

    def out(name: str) -> str:
        return locations.join(output_root, *parts, name)

    return PartitionPaths(
        partition,
        locations.join(input_root, *parts),
        out(PREDICTIONS_FILE),
        out(REJECTS_FILE),
        out(REPORT_FILE),
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
    """Load the model (an alias resolves to its version now), score one partition, and
    compare its inputs and predictions with the version's training profile."""
    from mlpipe import signals
    from mlpipe.batch import score as scoring
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
    monitor = drift.Counts(loaded.profile) if loaded.profile else None
    summary = scoring.score(
        loaded,
        locations.data_files(paths.input),
        locations.parquet_output(paths.output, paths.rejects),
        id_columns=id_columns,
        max_rejects=max_rejects,
        monitor=monitor,
    )
    outcome: dict[str, Any] = {"summary": summary.to_dict(), "drift": None}
    if monitor is None:
        logger.warning("version %s has no training profile: drift not checked", loaded.version)
        return outcome
    result = drift.compare(monitor)
    report = report_html(paths.partition, loaded, result)
    locations.write_text(paths.report, report)  # beside the predictions
    run_id = log_drift(tracking_uri, paths.partition, loaded, outcome["summary"], result, report)
    outcome["drift"] = result.summary() | {"mlflow_run_id": run_id}
    if result.drifted:
        logger.warning("drift in %s: %s", paths.partition, outcome["drift"])
        signals.drift_detected(
            loaded.ref.name,
            loaded.version,
            f"batch:{paths.partition}",
            result,
            partition=paths.partition,
            mlflow_run_id=run_id,
        )
    return outcome


def report_html(partition: str, loaded: Any, result: Any) -> str:
    """The drift report of one partition (HTML)."""
    name = loaded.ref.name or "local"
    title = f"Drift of {partition} from {name} version {loaded.version}"
    return drift_report.html_report(result, loaded.profile, title)


def log_drift(
    tracking_uri: str,
    partition: str,
    loaded: Any,
    summary: dict[str, Any],
    result: Any,
    report: str,
) -> str:
    """An MLflow run of this scoring run: the drift figures and the HTML report."""
    from mlpipe.tracking import Tracker

    name = loaded.ref.name or "local"
    tracker = Tracker.connect(tracking_uri, f"{name}-scoring")
    return tracker.log_scoring(
        run_name=f"score-{partition}",
        params={"partition": partition, "model_version": loaded.version, "input": summary["input"]},
        metrics=result.metrics()
        | {k: float(summary[k]) for k in ("rows", "scored", "rejected", "seconds")},
        tags={
            "mlpipe.partition": partition,
            "mlpipe.model_name": name,
            "mlpipe.model_version": str(loaded.version),
            "mlpipe.drifted": str(result.drifted).lower(),
        },
        texts={REPORT_FILE: report},
    )


def latest_partition(input_root: str) -> str:
    """The newest partition folder (by name: date=YYYY-MM-DD sorts by day) that has input."""
    found = input_partitions(input_root)
    if not found:
        raise DataError(f"{input_root}: no partition folder with .csv or .parquet files")
    return max(found)


def input_partitions(input_root: str) -> dict[str, int]:
    """Folders directly under ``input_root`` (a local folder or an S3 prefix) holding data
    files, with their file counts, in name order. Hidden and ``_``-prefixed names are skipped:
    land files under such a name and rename them when whole (on S3, an object appears whole)."""
    found = {}
    for name in locations.subfolders(input_root):
        if name.startswith((".", "_")) or not _PARTITION_PART.match(name):
            continue
        try:
            found[name] = len(locations.data_files(locations.join(input_root, name)).files)
        except DataError:
            continue
    return found


def scheduled_partition(lag_days: int) -> str:
    """``date=...`` of this run's scheduled day minus ``lag_days`` (a run scheduled for
    2026-11-23 06:00 with lag 1 scores date=2026-11-22, the day that has just ended)."""
    from prefect.runtime import flow_run

    return f"date={flow_run.scheduled_start_time.date() - timedelta(days=lag_days)}"


def _drifted(found: dict[str, Any] | None) -> str:
    """The summary table's drift cell: the drifted columns, "none" or "not checked"."""
    if found is None:
        return "not checked"
    if not found["drifted"]:
        return "none"
    return "DRIFT: " + ", ".join([*found["drifted_features"], *found["drifted_outputs"]])


@flow(name="batch_score", log_prints=False)
def batch_score(
    partition: str | None = None,
    lag_days: int = 1,
    model: str = DEFAULT_MODEL_URI,
    input_root: str = str(DEFAULT_INPUT_ROOT),
    output_root: str = str(DEFAULT_OUTPUT_ROOT),
    id_columns: list[str] | None = None,
    max_rejects: int | None = 1000,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score ``input_root/partition/`` into ``output_root/partition/predictions.parquet``;
    without a partition (scheduled runs), the scheduled day minus ``lag_days``."""

    if partition == LATEST:
        partition = latest_partition(input_root)
    partition = partition or scheduled_partition(lag_days)
    paths = partition_paths(partition, input_root, output_root)
    outcome = score_partition(
        paths,
        model,
        tracking_uri or Settings.from_env().tracking_uri,
        id_columns or [],
        max_rejects,
    )
    summary, found = outcome["summary"], outcome["drift"]
    get_run_logger().info(
        "%s: %d rows, %d scored, %d rejected, %.0f rows/s -> %s",
        partition,
        summary["rows"],
        summary["scored"],
        summary["rejected"],
        summary["rows_per_second"],
        summary["output"],
    )
    row = {"partition": partition} | summary | {"drift": _drifted(found)}
    if found:
        row |= {k: found[k] for k in ("max_psi", "max_psi_feature", "min_p_value", "mlflow_run_id")}
    verdict = drift.verdict(found)
    create_table_artifact(
        [{k: v if isinstance(v, (int, float, str)) else str(v) for k, v in row.items()}],
        key=SUMMARY_ARTIFACT,
        description=f"batch_score {partition}: {summary['rows']} rows, drift {verdict}",
    )
    return summary | {"partition": partition, "drift": found}


@flow(name="watch_incoming", log_prints=False)
def watch_incoming(
    input_root: str = str(DEFAULT_INPUT_ROOT),
    output_root: str = str(DEFAULT_OUTPUT_ROOT),
    poll_seconds: float = 60.0,
    watch_seconds: float = 0.0,
) -> list[str]:
    """Emit ``mlpipe.data.arrived`` once for each partition under ``input_root`` that has input
    files and no predictions yet: one look, then one every ``poll_seconds`` until
    ``watch_seconds`` have passed (one run watches for a while, so the deployment needs a run an
    hour rather than one a minute). Returns the partitions this run announced."""
    import time

    started = time.monotonic()
    announced = _look(input_root, output_root)
    while time.monotonic() - started + poll_seconds <= watch_seconds:
        time.sleep(poll_seconds)
        announced += _look(input_root, output_root)
    return announced


def _look(input_root: str, output_root: str) -> list[str]:
    """One look at ``input_root``: announce the partitions waiting and not announced yet."""
    from prefect.variables import Variable

    from mlpipe import signals

    waiting = {
        p: files
        for p, files in input_partitions(input_root).items()
        if not locations.exists(partition_paths(p, input_root, output_root).output)
    }
    # What earlier looks announced and is still waiting; kept in a Prefect variable, so the
    # sensor holds no state of its own. Deployed with a concurrency limit of 1.
    name = f"mlpipe_announced_{zlib.crc32(locations.absolute(input_root).encode()):08x}"
    announced: set[str] = set(Variable.get(name, default=[]) or [])
    new = [p for p in waiting if p not in announced]
    for partition in new:
        signals.data_arrived(partition, input_root, waiting[partition])
    still = announced.intersection(waiting) | set(new)
    if still != announced:  # a write only on change: a look a minute, mostly nothing new
        Variable.set(name, sorted(still), overwrite=True)
    get_run_logger().info("%d partition(s) waiting, announced %s", len(waiting), new or "none")
    return new
