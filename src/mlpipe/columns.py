"""Column kinds: what each column of a table is, decided once at load and stored with the model.

A feature column is ``numeric`` (integers and floats), ``boolean`` (fitted as 0/1) or
``categorical`` (strings, objects, pandas ``category``, and integer codes the spec declares in
``data.categorical``). A string column whose values are almost all distinct (a name, an order
id) is an identifier: it is left out, and said so. ``Columns`` records the decision; ``prepare``
turns a table as pandas reads it into the frame every model of the table fits on (numbers as
float64, categories as strings, every missing value as NaN); ``CastColumns`` is that step inside
the registered pipeline, so serving, batch and stream cast a row exactly as training did.

How each family encodes categories (``encoder``), as the scikit-learn pipeline it is equal to:

- random_forest, extra_trees: ``OneHotEncoder(handle_unknown="infrequent_if_exist",
  min_frequency=MIN_FREQUENCY, max_categories=MAX_ONE_HOT)`` on the categorical columns with
  at most MAX_ONE_HOT categories in the training split, scikit-learn's cross-fitted
  ``TargetEncoder`` on those with more, the others passed through (NaN reaches the trees, which
  take it natively);
- hist_gradient_boosting, xgboost, lightgbm: ``OrdinalEncoder`` codes (unknown and missing both
  NaN, the categories beyond ``MAX_CODES`` in one infrequent code) fed to the library's native
  categorical splits (``categorical_features``, ``feature_types``, ``categorical_feature``).

The encoder is fitted inside each fold of a search, as GridSearchCV fits a pipeline's. Pure: no
Prefect, no MLflow.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from mlpipe.errors import DataError

NUMERIC, BOOLEAN, CATEGORICAL = "numeric", "boolean", "categorical"
# A string column is an identifier when this share of its filled rows hold distinct values
IDENTIFIER_SHARE = 0.9
# One-hot (forests): categories seen in fewer rows than this share one infrequent column, and a
# column keeps at most MAX_ONE_HOT columns (its most frequent categories, the rest infrequent)
MIN_FREQUENCY = 5
MAX_ONE_HOT = 32
# Native categorical splits: HistGradientBoosting bins at most 255 values, one of them missing
MAX_CODES = 254
ONE_HOT_FAMILIES = frozenset({"random_forest", "extra_trees"})
COLUMNS_FILE = "columns.json"


@dataclass(frozen=True)
class Columns:
    """The kinds of a table's feature columns, in the table's order, and what was left out."""

    kinds: Mapping[str, str]  # feature -> numeric | boolean | categorical
    integer_coded: tuple[str, ...] = ()  # categorical by data.categorical, given as numbers
    identifiers: tuple[str, ...] = ()  # left out: almost every value distinct
    dropped: tuple[str, ...] = ()  # left out by data.drop

    @property
    def features(self) -> list[str]:
        return list(self.kinds)

    @property
    def categorical(self) -> list[str]:
        return [c for c, kind in self.kinds.items() if kind == CATEGORICAL]

    @property
    def numeric(self) -> list[str]:
        """The columns fitted as numbers (booleans as 0/1 among them), in table order."""
        return [c for c, kind in self.kinds.items() if kind != CATEGORICAL]

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": dict(self.kinds),
            "integer_coded": list(self.integer_coded),
            "identifiers": list(self.identifiers),
            "dropped": list(self.dropped),
        }


def decide_columns(
    frame: pd.DataFrame, categorical: Sequence[str] = (), drop: Sequence[str] = ()
) -> Columns:
    """Each feature column's kind (``frame`` holds the features only). Raises DataError naming
    the column for a datetime column, an all-missing one, a categorical one with a single
    value, and a declared column the table lacks."""
    for option, names in (("data.categorical", categorical), ("data.drop", drop)):
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise DataError(
                f"{option}: column {missing[0]!r} is not in the table; feature columns are: "
                f"{', '.join(map(str, frame.columns))}"
            )
    kinds: dict[str, str] = {}
    integer_coded, identifiers = [], []
    for name in frame.columns:
        if name in drop:
            continue
        column = frame[name]
        filled = column.dropna()
        where = f"data.source: column {name!r}"
        if pd.api.types.is_datetime64_any_dtype(column) or isinstance(column.dtype, pd.PeriodDtype):
            raise DataError(
                f"{where} holds dates ({column.dtype}); add it to data.drop, or turn it into "
                "numbers (a year, a day of the week) before training"
            )
        if filled.empty:
            raise DataError(f"{where} is empty in every row; add it to data.drop")
        if name in categorical:
            kind = CATEGORICAL
            if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
                integer_coded.append(str(name))
        else:
            kind = _kind_of(column, filled)
        if kind == CATEGORICAL and filled.nunique() < 2:
            raise DataError(
                f"{where} has one value only ({filled.iloc[0]!r}): it cannot tell rows apart; "
                "add it to data.drop"
            )
        if (
            kind == CATEGORICAL
            and name not in categorical
            and not isinstance(column.dtype, pd.CategoricalDtype)
            and len(filled) > 1
            and filled.nunique() >= IDENTIFIER_SHARE * len(filled)
        ):
            identifiers.append(str(name))
            continue
        kinds[str(name)] = kind
    if not kinds:
        raise DataError("data.source: no feature columns are left after data.drop and identifiers")
    return Columns(kinds, tuple(integer_coded), tuple(identifiers), tuple(map(str, drop)))


def _kind_of(column: pd.Series, filled: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return BOOLEAN
    if isinstance(column.dtype, pd.CategoricalDtype):
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(column):
        return NUMERIC
    # an object column of True/False with empty cells (as pandas reads such a CSV column)
    if all(isinstance(v, bool | np.bool_) for v in filled):
        return BOOLEAN
    return CATEGORICAL


def needs_frame(columns: Columns) -> bool:
    """Whether a model of this table needs its column step: a categorical column. A table of
    numbers and booleans fits on its float64 matrix (booleans as 0/1), as before column kinds."""
    return any(kind == CATEGORICAL for kind in columns.kinds.values())


def columns_of(prepared: pd.DataFrame) -> Columns:
    """The kinds as far as a column step needs them, from a ``prepare``d frame: strings are
    categorical, float64 numeric (booleans were cast to 0/1)."""
    return Columns(
        {
            str(c): NUMERIC if pd.api.types.is_float_dtype(prepared[c]) else CATEGORICAL
            for c in prepared
        }
    )


def prepare(frame: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """``frame``'s feature columns as the models fit them: numbers and booleans as float64,
    categories as Python strings (an integer code ``3`` or ``3.0`` as ``"3"``), every missing
    value (None, NaN, pandas' NA, an empty cell) as NaN. Extra columns are left out."""
    out: dict[str, Any] = {}
    for name, kind in columns.kinds.items():
        column = frame[name]
        if kind == CATEGORICAL:
            # object, not pandas 3's inferred string dtype: NaN stays NaN for the encoders
            out[name] = pd.Series(_as_categories(column), index=frame.index, dtype=object)
        elif kind == BOOLEAN:
            out[name] = column.astype(object).where(column.notna(), np.nan).astype("float64")
        else:
            out[name] = pd.to_numeric(column).astype("float64")
    return pd.DataFrame(out, index=frame.index)


def _as_categories(column: pd.Series) -> np.ndarray:
    values = column.astype(object).to_numpy()
    missing = pd.isna(values)
    out = np.empty(len(values), dtype=object)
    out[missing] = np.nan
    for i in np.flatnonzero(~missing):
        value = values[i]
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)
        out[i] = value if isinstance(value, str) else str(value)
    return out


def categories(frame: pd.DataFrame, columns: Columns) -> dict[str, list[str]]:
    """Each categorical column's categories in ``frame`` (the training split), sorted: the
    mapping stored with the model."""
    return {c: sorted(frame[c].dropna().unique().tolist()) for c in columns.categorical}


def profiled_categories(frame: pd.DataFrame, columns: Columns, most: int) -> dict[str, list[str]]:
    """Each categorical column's ``most`` most frequent categories in ``frame`` (ties by name):
    the bins of its drift profile, before one bin for the rest."""
    out = {}
    for name in columns.categorical:
        counts = frame[name].dropna().value_counts()
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        out[name] = [str(category) for category, _ in ranked[:most]]
    return out


def profile_matrix(
    prepared: pd.DataFrame, most: int
) -> tuple[np.ndarray, dict[str, tuple[list[str], list[int]]]]:
    """A ``prepare``d training frame as its drift profile counts it: numbers as they are, a
    category as its code (its position in the frame's sorted categories, as the input contract
    codes it); and per categorical column its ``most`` most frequent categories, with the bin
    of each code (theirs, then one for the rest and for an unseen code)."""
    columns = columns_of(prepared)
    mapping = categories(prepared, columns)
    profiled = profiled_categories(prepared, columns, most)
    bins = {}
    for name, frequent in profiled.items():
        rank = {category: k for k, category in enumerate(frequent)}
        codes = [rank.get(category, len(frequent)) for category in mapping[name]]
        bins[name] = (frequent, [*codes, len(frequent)])
    return profile_codes(prepared, mapping), bins


def profile_codes(frame: pd.DataFrame, profiled: Mapping[str, list[str]]) -> np.ndarray:
    """``frame`` (``prepare``d) as a float64 matrix: numbers as they are, a category of
    ``profiled`` as its position there, any other as one more, missing as NaN."""
    matrix = np.empty(frame.shape, dtype=np.float64)
    for j, name in enumerate(frame.columns):
        if name not in profiled:
            matrix[:, j] = frame[name].to_numpy(dtype=np.float64)
            continue
        index = {category: k for k, category in enumerate(profiled[name])}
        rest = len(index)
        values = frame[name].to_numpy(dtype=object)
        matrix[:, j] = [np.nan if pd.isna(v) else index.get(v, rest) for v in values]
    return matrix


class CastColumns(TransformerMixin, BaseEstimator):
    """The registered pipeline's first step: ``prepare`` for the model's column kinds. It learns
    nothing (``fit`` checks nothing and returns self)."""

    def __init__(self, kinds: dict[str, str] | None = None) -> None:
        self.kinds = kinds

    def fit(self, X: Any, y: Any = None) -> CastColumns:
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        return prepare(pd.DataFrame(X), Columns(dict(self.kinds or {})))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(list(self.kinds or {}), dtype=object)


@dataclass(frozen=True)
class Encoding:
    """How one family takes one table's categories: the column step (an unfitted
    ``ColumnTransformer``, categorical columns first) and the estimator's arguments that point
    its native categorical splits at them."""

    transformer: Any
    model_params: dict[str, Any] = field(default_factory=dict)


def encoder(
    family: str, columns: Columns, X: pd.DataFrame, task: str = "regression", seed: int = 0
) -> Encoding:
    """The column step of ``family`` for ``columns`` (see the module docstring); ``X`` is the
    split the search runs on (its categories per column choose one-hot or target encoding for
    the forests), ``task`` and ``seed`` the target encoder's target type and cross-fitting."""
    from sklearn.compose import ColumnTransformer
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, TargetEncoder

    cats = columns.categorical
    entries: list[tuple[str, Any, list[str]]] = []
    if family in ONE_HOT_FAMILIES:
        counts = prepare(X[cats], Columns(dict.fromkeys(cats, CATEGORICAL))).nunique()
        many = [c for c in cats if counts[c] > MAX_ONE_HOT]
        few = [c for c in cats if c not in many]
        if few:
            one_hot = OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                min_frequency=MIN_FREQUENCY,
                max_categories=MAX_ONE_HOT,
                sparse_output=False,
            )
            entries.append(("categories", one_hot, few))
        if many:  # cross-fitted on 5 shuffled folds of the rows it is fitted on
            regression = task == "regression"
            folds = (KFold if regression else StratifiedKFold)(5, shuffle=True, random_state=seed)
            target_type = "continuous" if regression else "auto"
            entries.append(("targets", TargetEncoder(target_type=target_type, cv=folds), many))
        params: dict[str, Any] = {}
    else:
        step = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=MAX_CODES,
        )
        entries = [("categories", step, cats)] if cats else []
        first = list(range(len(cats)))
        params = {  # type: ignore[assignment]
            "hist_gradient_boosting": {"categorical_features": first or None},
            "xgboost": {
                "enable_categorical": True,
                "feature_types": ["c"] * len(cats) + ["q"] * len(columns.numeric),
            },
            # (categorical_column: LightGBM's alias that its sklearn wrapper passes on quietly)
            "lightgbm": {"categorical_column": first} if first else {},
        }[family]
    transformer = ColumnTransformer(
        entries,
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    return Encoding(transformer, params)


def fit_fold(
    encoding: Encoding, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One fold's rows through a fresh copy of the column step, fitted on the fold's training
    rows only: the (train, test) float64 matrices the estimator takes."""
    from sklearn.base import clone

    step = clone(encoding.transformer)
    with warnings.catch_warnings():
        # OneHotEncoder's warning that a fold's test rows hold a category its training rows
        # lacked: they go to the infrequent column, as at serving time
        warnings.filterwarnings("ignore", message="Found unknown categories")
        fitted = step.fit_transform(X.iloc[train], y[train])
        return (
            np.asarray(fitted, dtype=np.float64),
            np.asarray(step.transform(X.iloc[test]), dtype=np.float64),
        )


def make_pipeline(columns: Columns, encoding: Encoding, estimator: Any) -> Any:
    """The registered model of a table with categories or booleans: cast, encode, estimate."""
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("cast", CastColumns(dict(columns.kinds))),
            ("encode", encoding.transformer),
            ("model", estimator),
        ]
    )
