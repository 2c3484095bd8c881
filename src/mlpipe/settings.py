"""The environment, read in one place, and the defaults more than one stage shares.

``Settings.from_env()`` reads the variables mlpipe itself acts on; commands build one and pass
what they need down as plain values, so nothing below the CLI reads ``os.environ`` to learn
where MLflow or Prefect is (tests pass an environment of their own). Variables that belong to a
library (AWS_*, PREFECT_* beyond the API URL) are left to that library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # ./mlflow.db: MLflow's embedded store
DEFAULT_MODEL_URI = "models:/boston-rf@champion"  # what the default `mlpipe train` registers
DEFAULT_INPUT_ROOT = Path("data/incoming")  # batch_score reads INPUT_ROOT/PARTITION/
DEFAULT_OUTPUT_ROOT = Path("data/scored")  # and writes OUTPUT_ROOT/PARTITION/predictions.parquet
DEFAULT_POOL = "mlpipe-process"  # the process work pool `mlpipe up` and `deploy` use
DEFAULT_HOME = Path.home() / ".mlpipe"  # `mlpipe up`'s state folder

# Switches of the libraries mlpipe drives, set for mlpipe's commands (and the processes they
# start) unless the user has set them: MLflow printed a "View run ... at" pair on stdout for
# every run against a server (166 lines for the default search; the summary links the parent
# run instead), and Prefect's and MLflow's usage telemetry printed a notice under the progress
# bar and, offline, "Failed to send telemetry" errors; with tqdm installed (Optuna brings it),
# MLflow draws a "Downloading artifacts" bar on stderr for every model it downloads, under
# mlpipe's own. Set one yourself to choose otherwise.
LIBRARY_DEFAULTS = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",  # Prefect's client telemetry and its first-run notice
}


def apply_library_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``LIBRARY_DEFAULTS`` where ``environ`` leaves them unset (the CLI does, first)."""
    for name, value in LIBRARY_DEFAULTS.items():
        environ.setdefault(name, value)


@dataclass(frozen=True)
class Settings:
    """What the environment says about where things are."""

    tracking_uri: str = DEFAULT_TRACKING_URI  # MLFLOW_TRACKING_URI
    prefect_api_url: str | None = None  # PREFECT_API_URL: None means Prefect's ephemeral mode
    home: Path = DEFAULT_HOME  # MLPIPE_HOME
    job_index: str | None = None  # JOB_COMPLETION_INDEX: set in a Kubernetes Indexed Job's pods

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        return cls(
            tracking_uri=environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
            prefect_api_url=environ.get("PREFECT_API_URL") or None,
            home=Path(environ.get("MLPIPE_HOME") or DEFAULT_HOME).expanduser(),
            job_index=environ.get("JOB_COMPLETION_INDEX"),
        )
