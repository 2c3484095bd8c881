"""The files a search leaves in ``<artifacts_dir>/<search_id>/``: the contract other tools read.

    tuning_results.json  search_id, task, scoring ("mse", "log_loss", ...), trials [...], best
                         {trial_id, params, mean_score}
    best_params.json     the best config's hyperparameters
    metrics.json         the refit model's scores on the held-out test split
    model/               the MLflow model (MLmodel, weights, signature, input example)
    report/              plots (see report.py)

Each JSON file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlpipe.trial import TrialResult

RESULTS_FILE, BEST_PARAMS_FILE, METRICS_FILE = (
    "tuning_results.json",
    "best_params.json",
    "metrics.json",
)
SCHEMA_VERSION = 1


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_results(
    out_dir: Path,
    search_id: str,
    results: Sequence[TrialResult],
    best: TrialResult,
    test_metrics: dict[str, float],
    extra: dict[str, Any],
) -> None:
    """Write tuning_results.json, best_params.json and metrics.json."""
    write_json(
        out_dir / RESULTS_FILE,
        {
            "schema_version": SCHEMA_VERSION,
            "search_id": search_id,
            "scoring": best.scoring,
            **extra,
            "n_trials": len(results),
            "n_failed": sum(r.status != "completed" for r in results),
            "trials": [r.to_json() for r in results],
            "best": {
                "trial_id": best.trial_id,
                "params": best.params,
                "mean_score": best.mean_score,
            },
        },
    )
    write_json(out_dir / BEST_PARAMS_FILE, best.params)
    write_json(
        out_dir / METRICS_FILE,
        {"split": "test", **test_metrics, f"cv_{best.scoring}": best.mean_score},
    )


def read_results(out_dir: Path) -> dict[str, Any]:
    """The parsed tuning_results.json of a search folder."""
    return dict(json.loads((out_dir / RESULTS_FILE).read_text()))


def completed_trials(out_dir: Path) -> dict[str, TrialResult]:
    """Trials a previous run of the same search finished, by trial id (empty if none)."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        trials = read_results(out_dir)["trials"]
    except (OSError, ValueError, KeyError):
        return {}  # an unreadable old file only means the trials run again
    return {
        t["trial_id"]: TrialResult.from_json(t) for t in trials if t.get("status") == "completed"
    }
