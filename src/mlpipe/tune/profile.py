"""What a registered version carries about its training data: the drift profile of the
training split (``drift.py``), and the rows its fast path's parity is checked on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlpipe import drift
from mlpipe.data import Split
from mlpipe.scoring import probability_columns
from mlpipe.spec import Spec


def with_missing(rows: pd.DataFrame, optional: list[str], each: int = 8) -> pd.DataFrame:
    """``rows`` after a few of them with each ``optional`` column missing, first: the fast
    path's parity sample then checks how it takes a missing value (a graph that sends NaN
    another way than the native trees do is not used)."""
    head = rows.head(each)
    blanks = [head.assign(**{name: np.nan}) for name in optional]
    return pd.concat([*blanks, rows]) if blanks else rows


def training_profile(
    spec: Spec, model: Any, split: Split, known: np.ndarray | None = None
) -> drift.Profile:
    """The training split's features and the model's predictions on them (a classifier's as
    class codes, and each class's probability named after ``known``, the dataset's labels),
    with the spec's drift thresholds: what batch runs and the server compare new inputs with."""
    monitoring = spec.monitoring
    predictions = np.asarray(model.predict(split.X_train)).ravel()
    classes = getattr(model, "classes_", None) if spec.model.task == "classification" else None
    probabilities = None
    if classes is not None:
        predictions = np.searchsorted(classes, predictions)
        proba = np.asarray(model.predict_proba(split.X_train)).T
        names = probability_columns(classes if known is None else known)
        probabilities = dict(zip(names, proba, strict=True))
    from mlpipe.columns import profile_matrix

    # a table with categories: its frequent categories, one bin each, and one bin for the rest
    matrix, profiled = profile_matrix(split.X_train, drift.BINS - 1 if split.frame else 0)
    return drift.build_profile(
        list(split.X_train.columns),
        matrix,
        predictions,
        drift.Thresholds(
            psi=monitoring.psi_threshold,
            ks=monitoring.ks_threshold,
            min_rows=monitoring.min_rows,
            window=monitoring.window,
            p_value=monitoring.p_value,
        ),
        probabilities=probabilities,
        categories=profiled,
    )
