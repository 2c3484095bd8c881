"""What a fitted column step outputs, read back for serving and the report: per categorical
column, the step's output for each code the input contract gives (the fast path's tables), and
the estimator's importances summed back to the table's columns. Pure: no Prefect, no MLflow.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def encoding_tables(pipeline: Any, mapping: Mapping[str, list[str]]) -> dict[str, Any] | None:
    """What a one-hot pipeline's column step outputs for each code the input contract gives a
    categorical column (its categories in ``mapping`` order, then an unseen one, then a
    missing one): one table per column, for the fast path to encode codes without scikit-learn
    (None: a family of native categorical splits, which has no exact ONNX form)."""
    from mlpipe.contract import UNSEEN

    encode = pipeline.named_steps["encode"]
    step = encode.named_transformers_.get("categories")
    if step is None or not hasattr(step, "drop_idx_"):  # OrdinalEncoder: native splits
        return None
    names, widths = list(step.feature_names_in_), _output_widths(step)
    values = {name: [*mapping[name], UNSEEN, np.nan] for name in names}
    longest = max(len(v) for v in values.values())
    frame = pd.DataFrame(
        {n: pd.Series(v + [v[0]] * (longest - len(v)), dtype=object) for n, v in values.items()}
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found unknown categories")
        block = np.asarray(step.transform(frame), dtype=np.float64)
    tables, offset = {}, 0
    for name, width in zip(names, widths, strict=True):
        tables[name] = block[: len(values[name]), offset : offset + width].tolist()
        offset += width
    if offset != block.shape[1]:
        return None
    numeric = [c for c in encode.feature_names_in_ if c not in tables]
    return {"categorical": tables, "numeric": numeric}


def _output_widths(step: Any) -> list[int]:
    """How many columns a fitted encoder outputs for each of its input columns: a one-hot
    encoder one per frequent category and one for the infrequent ones; ordinal codes one."""
    if not hasattr(step, "drop_idx_"):
        return [1] * len(step.feature_names_in_)
    infrequent = getattr(step, "infrequent_categories_", None) or [None] * len(step.categories_)
    return [
        len(cats) - (0 if rare is None else len(rare) - 1)
        for cats, rare in zip(step.categories_, infrequent, strict=True)
    ]


def source_importances(model: Any, names: Sequence[str]) -> dict[str, float] | None:
    """The estimator's feature importances per column of the table (a category's one-hot
    columns summed back to their source); None when it has none (histogram boosting)."""
    pipeline = hasattr(model, "named_steps")
    estimator = model.named_steps["model"] if pipeline else model
    importances = getattr(estimator, "feature_importances_", None)
    if importances is None:
        return None
    sources = list(names)
    if pipeline:
        encode = model.named_steps["encode"]
        step = encode.named_transformers_.get("categories")
        sources = []
        if step is not None and hasattr(step, "feature_names_in_"):
            for name, width in zip(step.feature_names_in_, _output_widths(step), strict=True):
                sources += [str(name)] * width
        sources += [c for c in encode.feature_names_in_ if c not in set(sources)]
    totals = dict.fromkeys(names, 0.0)
    for source, value in zip(sources, np.asarray(importances, dtype=np.float64), strict=True):
        totals[source] += float(value)
    return totals
