"""The tuning report: plots of a finished search, written as PNG files beside its results.

- hyperparameters.png: each hyperparameter against the mean CV score (one panel each)
- predicted_vs_actual.png (regression): the refit model on the held-out test split
- confusion_matrix.png, calibration.png, and for two classes roc.png and
  precision_recall.png (classification): the refit model on the held-out test split
  (``classplots.py``)
- feature_importances.png: the refit model's importances, largest first
- optimization_history.png (model-based search): each trial's CV score in the order asked, and
  the best so far, as Optuna's ``plot_optimization_history`` draws it
- param_importances.png (model-based search): each hyperparameter's share of the CV score's
  variance (``tpe.param_importances``: Optuna's fANOVA), as ``plot_param_importances`` draws it
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.data import Split
from mlpipe.scoring import HeldOut, get_scoring
from mlpipe.trial import TrialResult


def write_report(
    folder: Path,
    results: Sequence[TrialResult],
    split: Split,
    predictions: np.ndarray,
    model: Any,
    family: str,
    history: bool = False,
    param_importances: dict[str, float] | None = None,
    classes: np.ndarray | None = None,
    held: HeldOut | None = None,
) -> list[Path]:
    """Draw the plots into ``folder`` (with ``history``, the optimisation history; with
    ``param_importances``, those; with ``classes`` and ``held``, a classifier's, from its
    predictions and probabilities on the test split); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    done = [r for r in results if r.status == "completed"]
    metric = f"CV {results[0].scoring}" if results else "CV score"
    names = sorted({k for r in done for k in r.params})
    fig, axes = plt.subplots(
        1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3), squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=False):
        values = [r.params.get(name) for r in done]
        if _continuous(values):  # drawn from a range: a numeric axis, log when it spans decades
            numbers = [float(v) for v in values]  # type: ignore[arg-type]
            ax.scatter(numbers, [r.mean_score for r in done], alpha=0.6, s=14)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
                ax.set_xscale("log")
        else:
            labels = sorted({_label(v) for v in values}, key=_sort_key)
            positions = {label: i for i, label in enumerate(labels)}
            xs = [positions[_label(v)] for v in values]
            ax.scatter(xs, [r.mean_score for r in done], alpha=0.6, s=14)
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel(f"mean {metric}")
    fig.suptitle(f"{family}: hyperparameters vs {metric} ({len(done)} trials)")
    fig.tight_layout()
    written.append(_save(fig, folder / "hyperparameters.png"))

    if classes is not None and held is not None:
        from mlpipe.tune import classplots

        codes = split.y_test.to_numpy(dtype=np.int64)
        written += classplots.draw(plt, folder, codes, held.predicted, held.proba, classes, _save)
    else:
        written.append(_predicted_vs_actual(plt, folder, split, predictions))
    from mlpipe.encodings import source_importances

    importances = source_importances(model, list(split.X_train.columns))
    if importances is not None:  # per column of the table: one-hot columns summed back
        names = sorted(importances, key=importances.__getitem__)
        fig, ax = plt.subplots(figsize=(5, 0.3 * len(names) + 1))
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance")
        ax.set_title("feature importances (per column)")
        fig.tight_layout()
        written.append(_save(fig, folder / "feature_importances.png"))
    if history and done:
        written.append(_history(plt, results, folder / "optimization_history.png"))
    if param_importances:
        names = list(param_importances)[::-1]  # largest on top
        fig, ax = plt.subplots(figsize=(5, 0.35 * len(names) + 1.2))
        ax.barh(names, [param_importances[n] for n in names])
        ax.set_xlabel(f"share of the {metric}'s variance (fANOVA)")
        ax.set_title("hyperparameter importances")
        fig.tight_layout()
        written.append(_save(fig, folder / "param_importances.png"))
    return written


def _predicted_vs_actual(plt: Any, folder: Path, split: Split, predictions: np.ndarray) -> Path:
    """A regressor's predictions on the held-out split against the truth."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    actual = split.y_test.to_numpy()
    ax.scatter(actual, predictions, alpha=0.6, s=14)
    low, high = (
        float(min(actual.min(), predictions.min())),
        float(max(actual.max(), predictions.max())),
    )
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set_xlabel(f"actual {split.y_test.name}")
    ax.set_ylabel("predicted")
    ax.set_title("held-out test split")
    fig.tight_layout()
    return _save(fig, folder / "predicted_vs_actual.png")


def _history(plt: Any, results: Sequence[TrialResult], path: Path) -> Path:
    """Each completed trial's CV score by its number (the order asked) and the best so far."""
    ordered = sorted(results, key=lambda r: r.index)
    numbers = [r.index for r in ordered if r.status == "completed"]
    scores = [r.mean_score for r in ordered if r.status == "completed"]
    scoring = get_scoring(ordered[0].scoring)
    best = (np.maximum if scoring.greater_is_better else np.minimum).accumulate(scores)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(numbers, scores, s=14, alpha=0.7, label="trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial (in the order asked)")
    ax.set_ylabel(f"mean CV {scoring.name}")
    ax.set_title("optimization history")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _continuous(values: Sequence[Any]) -> bool:
    """Numbers with more distinct values than a grid axis holds (a range's draws)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return numbers and len(set(values)) > 12


def _label(value: Any) -> str:
    return "None" if value is None else str(value)


def _sort_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
