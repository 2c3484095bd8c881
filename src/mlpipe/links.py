"""Where a person looks: the MLflow UI's pages of a search, for a tracking server.

MLflow 3's UI opens an experiment on its GenAI views (traces) unless told otherwise: the
experiment kind tag (``EXPERIMENT_KIND``, set on the experiments mlpipe creates) and the
``workflowType=machine_learning`` query open it on its training runs. A search's runs page lists
its trials (the parent run's children), sorted by their mean cross-validated MSE, best first
(which columns the table shows is the UI's own saved choice, not part of a link). A SQLite file
or a folder has no pages: the links are None.
"""

from __future__ import annotations

from urllib.parse import urlencode

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def cv_metric(scoring: str) -> str:
    """A trial's mean cross-validated score, as ``tracking.log_trial`` logs it."""
    return f"cv_{scoring}_mean"


def _server(tracking_uri: str) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The page of one run (a search's parent run: its metrics, artifacts, registered model)."""
    base = _server(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None


def trials_page(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    scoring: str = "mse",
) -> str | None:
    """The experiment's training runs, filtered to this search's trials, best first (by the
    search's scoring: ascending for a loss)."""
    from mlpipe.scoring import get_scoring

    base = _server(tracking_uri)
    if base is None:
        return None
    query = urlencode(
        {
            "workflowType": "machine_learning",
            "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            "orderByKey": f"metrics.`{cv_metric(scoring)}`",
            "orderByAsc": str(not get_scoring(scoring).greater_is_better).lower(),
        }
    )
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"
