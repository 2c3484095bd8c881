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
    """What a forest pipeline's column step outputs (one-hot columns, target encodings) for
    each code the input contract gives a categorical column (its categories in ``mapping``
    order, then an unseen one, then a missing one): one table per column, in the step's output
    order, for the fast path to encode codes without scikit-learn (None: a family of native
    categorical splits, which has no exact ONNX form)."""
    from mlpipe.contract import UNSEEN

    encode = pipeline.named_steps["encode"]
    steps = _fitted_steps(encode)
    if not steps or not all(_tabled(step) for step in steps):  # OrdinalEncoder: native splits
        return None
    tables: dict[str, list[list[float]]] = {}
    for step in steps:
        names, widths = list(step.feature_names_in_), _output_widths(step)
        values = {name: [*mapping[name], UNSEEN, np.nan] for name in names}
        longest = max(len(v) for v in values.values())
        frame = pd.DataFrame(
            {n: pd.Series(v + [v[0]] * (longest - len(v)), dtype=object) for n, v in values.items()}
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found unknown categories")
            block = np.asarray(step.transform(frame), dtype=np.float64)
        offset = 0
        for name, width in zip(names, widths, strict=True):
            tables[name] = block[: len(values[name]), offset : offset + width].tolist()
            offset += width
        if offset != block.shape[1]:
            return None
    numeric = [c for c in encode.feature_names_in_ if c not in tables]
    return {"categorical": tables, "numeric": numeric}


# How tuning_results.json names each encoder of a categorical column
_ENCODINGS = {"OneHotEncoder": "one_hot", "TargetEncoder": "target", "OrdinalEncoder": "codes"}


def column_encodings(model: Any) -> dict[str, str] | None:
    """Each categorical column's encoding in a fitted pipeline: ``one_hot``, ``target``
    (scikit-learn's TargetEncoder) or ``codes`` (native categorical splits); None for a model
    of numbers alone."""
    if not hasattr(model, "named_steps"):
        return None
    return {
        str(name): _ENCODINGS.get(type(step).__name__, type(step).__name__)
        for step in _fitted_steps(model.named_steps["encode"])
        for name in step.feature_names_in_
    }


def _fitted_steps(encode: Any) -> list[Any]:
    """A fitted ColumnTransformer's encoders of categorical columns, in its output order."""
    return [
        step
        for name, step, _ in encode.transformers_
        if name != "remainder" and step not in ("drop", "passthrough")
    ]


def _tabled(step: Any) -> bool:
    """Whether the fast path can take ``step`` as tables: one-hot columns or target encodings
    (an ordinal code feeds native categorical splits, which no converter reproduces)."""
    return hasattr(step, "drop_idx_") or hasattr(step, "target_type_")


def _output_widths(step: Any) -> list[int]:
    """How many columns a fitted encoder outputs for each of its input columns: a one-hot
    encoder one per frequent category and one for the infrequent ones; a target encoder one,
    or one per class of a multiclass target; ordinal codes one."""
    if hasattr(step, "target_type_"):
        per = len(step.classes_) if step.target_type_ == "multiclass" else 1
        return [per] * len(step.feature_names_in_)
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
        sources = []
        for step in _fitted_steps(encode):
            for name, width in zip(step.feature_names_in_, _output_widths(step), strict=True):
                sources += [str(name)] * width
        sources += [c for c in encode.feature_names_in_ if c not in set(sources)]
    totals = dict.fromkeys(names, 0.0)
    for source, value in zip(sources, np.asarray(importances, dtype=np.float64), strict=True):
        totals[source] += float(value)
    return totals
