"""What the Prefect UI shows of a finished search: its summary in the flow run's logs and the
top trials as a table artifact, so the flow-run page alone tells what the run produced (the
full record stays in MLflow and the artifacts folder)."""

from __future__ import annotations

import re
from typing import Any

from mlpipe.links import run_page, trials_page
from mlpipe.search import ranked
from mlpipe.trial import TrialResult

TOP = 10


def summary_lines(outcome: Any, tracking_uri: str) -> list[str]:
    """The search in a few lines: best params and CV score, test scores, the registered
    version and its alias, where the runs and the artifacts are."""
    best: TrialResult = outcome.best
    promotion, test = outcome.promotion, outcome.test_metrics
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    failed = sum(r.status != "completed" for r in outcome.results)
    parent = run_page(tracking_uri, outcome.experiment_id, outcome.parent_run_id)
    trials = trials_page(tracking_uri, outcome.experiment_id, outcome.parent_run_id, best.scoring)
    return [
        f"search {outcome.search_id}: {len(outcome.results)} trials ({failed} failed, "
        f"{outcome.reused} reused); best {best.trial_id} ({params}) cv {best.scoring} "
        f"{best.mean_score:.4f}"
        f" ± {best.std_score:.4f}",
        "test split: " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()),
        f"{'unchanged, ' if outcome.unchanged else ''}registered {outcome.model_name} "
        f"version {promotion.version} -> alias "
        f"{promotion.alias} ({'promoted' if promotion.promoted else 'not promoted'})",
        f"mlflow parent run {parent or outcome.parent_run_id + ' (' + tracking_uri + ')'}",
        *([f"mlflow trials, best first {trials}"] if trials else []),
        f"artifacts {outcome.artifacts_path}/",
    ]


def top_trials(results: list[TrialResult], top: int = TOP) -> list[dict[str, Any]]:
    """The best ``top`` completed trials, one row each: rank, trial, params, CV mean and std."""
    done = ranked(results)
    return [
        {"rank": rank, "trial": r.trial_id, f"cv_{r.scoring}": round(r.mean_score, 6),
         f"cv_{r.scoring}_std": round(r.std_score, 6)} | {k: str(v) for k, v in r.params.items()}
        for rank, r in enumerate(done[:top], 1)
    ]  # fmt: skip


def artifact_key(model_name: str) -> str:
    """Prefect's artifact keys hold lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{model_name}-top-trials".lower()).strip("-")


def to_flow_run(outcome: Any, tracking_uri: str) -> None:
    """Log the summary to the current flow run and publish the top-trials table."""
    from prefect import get_run_logger
    from prefect.artifacts import create_table_artifact

    logger = get_run_logger()
    for line in summary_lines(outcome, tracking_uri):
        logger.info("%s", line)
    create_table_artifact(
        top_trials(outcome.results),
        key=artifact_key(outcome.model_name),
        description=(
            f"top trials of search {outcome.search_id}: {outcome.model_name} version "
            f"{outcome.promotion.version} -> {outcome.promotion.alias}"
        ),
    )
