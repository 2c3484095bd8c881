"""Tasks and scorings: what a search predicts, how a fold is scored and which way is better.

Every metric is computed as scikit-learn's scorer of the same name computes it (the binary
scorers take the positive class's column, ``classes_[1]``, as ``_get_response_values`` does), so
a search's mean CV scores equal ``GridSearchCV(..., scoring=Scoring.sklearn)``'s. Scores keep
their sign as the user reads them (MSE and log loss positive, lower is better); ``Scoring.loss``
turns any of them into the lower-is-better number a search ranks by. Pure: no Prefect, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TASKS = ("regression", "classification")
# a classifier's labels in code order, a JSON list beside its registered model: what serving,
# batch scoring and the stream name the predicted classes and probability columns by
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Scoring:
    """A search's primary score."""

    name: str
    task: str
    greater_is_better: bool
    sklearn: str  # the name GridSearchCV's ``scoring=`` takes for the same score
    binary_only: bool = False

    def loss(self, value: float) -> float:
        """``value`` as a lower-is-better number (what a search ranks by)."""
        return -value if self.greater_is_better else value


SCORINGS: dict[str, Scoring] = {
    s.name: s
    for s in (
        Scoring("mse", "regression", False, "neg_mean_squared_error"),
        Scoring("mae", "regression", False, "neg_mean_absolute_error"),
        Scoring("r2", "regression", True, "r2"),
        Scoring("log_loss", "classification", False, "neg_log_loss"),
        Scoring("accuracy", "classification", True, "accuracy"),
        Scoring("f1_macro", "classification", True, "f1_macro"),
        Scoring("roc_auc", "classification", True, "roc_auc", binary_only=True),
        Scoring("roc_auc_ovr", "classification", True, "roc_auc_ovr"),
    )
}
DEFAULT_SCORING = {"regression": "mse", "classification": "log_loss"}


def allowed(task: str) -> list[str]:
    """The scorings a task takes, its default first."""
    names = [n for n, s in SCORINGS.items() if s.task == task]
    return sorted(names, key=lambda n: n != DEFAULT_SCORING[task])


def get_scoring(name: str) -> Scoring:
    return SCORINGS[name]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE and R2, computed as scikit-learn's scorers do."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(y_true, y_pred))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }


def classification_metrics(
    y_true: np.ndarray, labels: np.ndarray, proba: np.ndarray
) -> dict[str, float]:
    """Log loss, accuracy, macro F1 and ROC AUC (binary: ``roc_auc``, which ``roc_auc_ovr``
    equals there; multiclass: one-vs-rest), from class codes (0..k-1), the predicted codes and
    the probabilities (one column per class the model learned, in code order).

    A metric scikit-learn refuses here is NaN, as GridSearchCV's ``error_score=nan`` records
    it: a model fitted on a fold that lacked a class (halving's smallest rungs subsample rows
    without stratifying) has too few probability columns for log loss and ROC AUC, while its
    accuracy and F1 stand."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    proba = np.asarray(proba)
    binary = proba.shape[1] == 2
    response = proba[:, 1] if binary else proba  # what scikit-learn's scorers hand the metric
    metrics = {
        "log_loss": _or_nan(log_loss, y_true, response),
        "accuracy": _or_nan(accuracy_score, y_true, labels),
        "f1_macro": _or_nan(f1_score, y_true, labels, average="macro"),
    }
    if binary:
        metrics["roc_auc"] = metrics["roc_auc_ovr"] = _or_nan(roc_auc_score, y_true, response)
    else:
        metrics["roc_auc_ovr"] = _or_nan(roc_auc_score, y_true, response, multi_class="ovr")
    return metrics


def _or_nan(metric: Any, *args: Any, **kwargs: Any) -> float:
    try:
        return float(metric(*args, **kwargs))
    except ValueError:
        return float("nan")


def fold_metrics(family: Any, model: Any, X: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    """Every metric of the family's task for the model's first ``k`` members on (X, y)."""
    if family.task == "regression":
        return regression_metrics(y, family.predict_first(model, X, k))
    return classification_metrics(
        y, family.predict_first(model, X, k), family.proba_first(model, X, k)
    )


def confusion(y_true: np.ndarray, labels: np.ndarray, classes: Any) -> dict[str, Any]:
    """The confusion matrix (rows: true class, columns: predicted, in class order), as JSON."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, labels, labels=np.arange(len(classes)))
    return {"classes": class_list(classes), "matrix": matrix.tolist()}


def class_list(classes: Any) -> list[Any]:
    """Class labels as the Python values JSON writes (numpy scalars unwrapped)."""
    return [c.item() if isinstance(c, np.generic) else c for c in classes]


@dataclass(frozen=True)
class HeldOut:
    """A fitted classifier on the test split: its metrics, predicted class codes and
    probabilities (what the confusion matrix and the report's plots are drawn from)."""

    metrics: dict[str, float]
    predicted: np.ndarray
    proba: np.ndarray


def held_out(model: Any, X: Any, codes: np.ndarray) -> HeldOut:
    """A fitted classifier on (X, the true class codes). Its ``classes_`` are the labels or
    their codes (XGBoost), sorted either way, so a class's position there is its code."""
    proba = np.asarray(model.predict_proba(X))
    predicted = np.searchsorted(model.classes_, np.asarray(model.predict(X)))
    return HeldOut(classification_metrics(codes, predicted, proba), predicted, proba)


def probability_columns(classes: Any) -> list[str]:
    """A classifier's probability columns (batch output, drift profile), one per class in code
    order: ``probability_<label>``; none for a regressor."""
    return [] if classes is None else [f"probability_{c}" for c in np.asarray(classes).tolist()]
