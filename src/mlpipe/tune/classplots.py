"""A classifier's plots on the held-out test split (``report.write_report`` calls ``draw``):

- confusion_matrix.png: counts, true class by row, predicted class by column
- calibration.png: the mean predicted probability against the observed frequency, per class
  (scikit-learn's ``calibration_curve``, 10 uniform bins)
- roc.png and precision_recall.png (two classes): for the positive class, ``classes[1]``
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def draw(
    plt: Any,
    folder: Path,
    codes: np.ndarray,
    predicted: np.ndarray,
    proba: np.ndarray,
    classes: Any,
    save: Callable[[Any, Path], Path],
) -> list[Path]:
    """The plots of the true class codes against the predicted ones and the probabilities (one
    column per class, in code order)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

    names = [str(c) for c in classes]
    written = []

    matrix = confusion_matrix(codes, predicted, labels=np.arange(len(names)))
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 1.0 * len(names) + 2))
    ax.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(column, row, str(count), ha="center", va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    written.append(save(fig, folder / "confusion_matrix.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    shown = names[1:] if len(names) == 2 else names
    for name in shown:
        code = names.index(name)
        observed, mean_predicted = calibration_curve(codes == code, proba[:, code], n_bins=10)
        ax.plot(mean_predicted, observed, marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("calibration (test split)")
    ax.legend(title="class")
    fig.tight_layout()
    written.append(save(fig, folder / "calibration.png"))

    if len(names) == 2:
        positive = codes == 1
        fpr, tpr, _ = roc_curve(positive, proba[:, 1])
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC, positive class {names[1]}")
        fig.tight_layout()
        written.append(save(fig, folder / "roc.png"))
        precision, recall, _ = precision_recall_curve(positive, proba[:, 1])
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(recall, precision)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"precision-recall, positive class {names[1]}")
        fig.tight_layout()
        written.append(save(fig, folder / "precision_recall.png"))
    return written
