"""Loading the table a search runs on, and the train/test split. Pure: no Prefect, no MLflow.

Splits follow scikit-learn exactly (``train_test_split(..., random_state=seed)``) so results can
be checked against ``GridSearchCV``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpipe.errors import DataError
from mlpipe.spec import BUILTIN_SOURCES, CLASSIFICATION_SOURCES, DataSpec

FILE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MIN_ROWS = 10  # rows with a target a search needs: a test split and folds of a few rows each

# Integer features stay integers in the model's signature (MLflow's `long`), so `mlflow.pyfunc`
# takes the table as pandas reads it; MLflow refuses an int64 column where the signature says
# double. Every width is declared as the widest (long, double): pyfunc takes an int32 Parquet
# column and the same file's CSV (int64) alike. uint64 (beyond long), booleans and nullable
# extension types are declared double, as every feature was before.
_SIGNATURE_DTYPE = {
    **dict.fromkeys(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"], "int64"),
    **dict.fromkeys(["float16", "float32", "float64"], "float64"),
}


@dataclass(frozen=True)
class Dataset:
    """Features and target of one table, with the feature types as loaded. ``X`` holds numbers
    as float64 and categories as strings (``columns.prepare``), missing values as NaN."""

    name: str
    X: pd.DataFrame
    y: pd.Series
    dtypes: dict[Any, str] = field(default_factory=dict)  # column -> int64, float64 or object
    # classification: the labels, sorted as scikit-learn's ``classes_`` (``y`` holds their codes,
    # 0..k-1, so every family fits the same classes in the same order); None for regression
    classes: np.ndarray | None = field(default=None, compare=False)
    # each feature's kind (None: built by hand, every column numeric) and the rows left out for
    # a missing target
    columns: Any = field(default=None, compare=False)
    dropped_rows: int = 0

    def decode(self, codes: Any) -> np.ndarray:
        """Class codes as the labels they stand for."""
        assert self.classes is not None
        return self.classes[np.asarray(codes, dtype=np.int64)]

    def as_loaded(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (rows of ``X``) with the columns' types as the table had them: what the
        signature and the input example describe. Exact: integer values were integers."""
        return frame.astype({c: self.dtypes.get(c, "float64") for c in frame.columns})

    @property
    def needs_frame(self) -> bool:
        """Whether models of this table take the frame through a column step (categories,
        booleans), not the float64 matrix alone."""
        from mlpipe.columns import needs_frame

        return self.columns is not None and needs_frame(self.columns)

    @property
    def notes(self) -> list[str]:
        """What loading left out, as the lines a user reads (``train`` prints them)."""
        notes = []
        if self.dropped_rows:
            notes.append(
                f"data: {self.dropped_rows} row(s) with no value in {self.y.name!r} left out"
            )
        if self.columns is not None and self.columns.identifiers:
            notes.append(
                f"data: column(s) {', '.join(self.columns.identifiers)} left out of the features: "
                "almost every value is distinct (an identifier); name one in data.categorical "
                "to keep it"
            )
        return notes

    @property
    def record(self) -> dict[str, Any]:
        """The column kinds and the rows left out, as ``tuning_results.json`` holds them."""
        kinds = self.columns.to_json() if self.columns is not None else None
        return {"columns": kinds, "dropped_rows": self.dropped_rows}

    @cached_property
    def fingerprint(self) -> str:
        """A stable hash of the values and column names: same data, same fingerprint."""
        digest = hashlib.sha256()
        digest.update("\x1f".join([*map(str, self.X.columns), str(self.y.name)]).encode())
        digest.update(pd.util.hash_pandas_object(self.X, index=False).to_numpy().tobytes())
        digest.update(pd.util.hash_pandas_object(self.y, index=False).to_numpy().tobytes())
        if self.classes is not None:
            digest.update(repr(self.classes.tolist()).encode())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """The train/test split, as DataFrames (names kept for the model) and float arrays."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    frame: bool = False  # the features go through a column step (``Dataset.needs_frame``)

    @cached_property
    def train_arrays(self) -> tuple[np.ndarray | pd.DataFrame, np.ndarray]:
        """What a search's trials fit on: the training features as a float64 matrix (the
        prepared frame, where a column step encodes it in each fold) and the target."""
        y = self.y_train.to_numpy(dtype=np.float64)
        if self.frame:
            return self.X_train.reset_index(drop=True), y
        return self.X_train.to_numpy(dtype=np.float64), y


def load_dataset(spec: DataSpec, seed: int, task: str = "regression") -> Dataset:
    """Load the table named by ``spec.source`` and separate the target column (for
    classification, as class codes: ``Dataset.classes``)."""
    frame = _read_source(spec, seed)
    if frame.empty:
        raise DataError(f"data.source {spec.source}: the table has no rows")
    target = spec.target_column
    if target not in frame.columns:
        raise DataError(
            f"data.target: column {target!r} is not in {spec.source}; "
            f"columns are: {', '.join(map(str, frame.columns))}"
        )
    from mlpipe.columns import BOOLEAN, CATEGORICAL, decide_columns, needs_frame, prepare

    for option, names in (("data.categorical", spec.categorical), ("data.drop", spec.drop)):
        if target in names:
            raise DataError(f"{option}: {target!r} is the target (data.target); remove it there")
    both = sorted(set(spec.categorical) & set(spec.drop))
    if both:
        raise DataError(
            f"data.categorical and data.drop both name {both[0]!r}; keep it in one of them"
        )
    missing_target = frame[target].isna()
    dropped_rows = int(missing_target.sum())
    if dropped_rows:
        frame = frame.loc[~missing_target].reset_index(drop=True)
        if len(frame) < MIN_ROWS:
            raise DataError(
                f"data.target: {len(frame)} row(s) have a value in {target!r} ({dropped_rows} "
                f"left out for a missing one); a search needs at least {MIN_ROWS}"
            )
    X = frame.drop(columns=[target])
    y = frame[target]
    if X.shape[1] == 0:
        raise DataError(f"data.source {spec.source}: no feature columns besides {target!r}")
    columns = decide_columns(X, spec.categorical, spec.drop)
    # The search computes on float64 (as GridSearchCV's input validation would), categories on
    # strings; the types as loaded are kept for the signature and the input example.
    # Booleans: in a table of numbers and booleans, 0/1 doubles, as before column kinds (it keeps
    # its float64 matrix, fast path and numeric contract); beside categories, MLflow's boolean
    # (pandas' nullable one: optional where missing), since the pipeline casts them itself
    loaded = {CATEGORICAL: "object"}
    if needs_frame(columns):
        loaded[BOOLEAN] = "boolean"
    dtypes = {
        c: loaded.get(kind) or _SIGNATURE_DTYPE.get(str(X[c].dtype), "float64")
        for c, kind in columns.kinds.items()
    }
    classes = None
    if task == "classification":
        classes, codes = _classes(y, target)
        y = pd.Series(codes, index=y.index, name=y.name)
    elif not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        raise DataError(
            f"data.target: column {target!r} holds labels (dtype {y.dtype}), not numbers to "
            "regress on; for a classifier set model.task: classification"
        )
    return Dataset(
        name=spec.name, X=prepare(X, columns), y=y.astype("float64"), dtypes=dtypes,
        classes=classes, columns=columns, dropped_rows=dropped_rows,
    )  # fmt: skip


def _classes(y: pd.Series, target: str) -> tuple[np.ndarray, np.ndarray]:
    """The sorted labels of a classification target and each row's code, as scikit-learn's
    estimators find them (``np.unique``); refuses a target with one class or one that looks
    continuous."""
    from sklearn.utils.multiclass import type_of_target

    values = y.to_numpy()
    if values.dtype == object:  # strings (pandas' object columns): one type, or unsortable
        kinds = {type(v).__name__ for v in values}
        if len(kinds) > 1:
            raise DataError(
                f"data.target: column {target!r} mixes label types ({', '.join(sorted(kinds))}); "
                "give every label the same type"
            )
    kind = type_of_target(values)
    if kind == "continuous":
        raise DataError(
            f"data.target: column {target!r} holds {y.nunique()} distinct non-integer values: a "
            "quantity, not classes; set model.task: regression"
        )
    classes, codes = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"data.target: column {target!r} has one class ({classes[0]!r}); a classifier "
            "needs at least two"
        )
    return classes, codes


def check_classes(dataset: Dataset, y_train: pd.Series, cv: int, scoring: str) -> None:
    """Refuse a class with fewer training rows than folds (StratifiedKFold needs one per fold)
    and ``roc_auc`` on more than two classes."""
    if dataset.classes is None:
        return
    counts = np.bincount(y_train.to_numpy(dtype=np.int64), minlength=len(dataset.classes))
    fewest = int(np.argmin(counts))
    if counts[fewest] < cv:
        raise DataError(
            f"data.target: class {dataset.classes[fewest]!r} has {counts[fewest]} row(s) in the "
            f"training split, fewer than search.cv={cv} folds; add rows of it, merge it into "
            "another class, or lower search.cv"
        )
    if scoring == "roc_auc" and len(dataset.classes) > 2:
        raise DataError(
            f"search.scoring: roc_auc scores two classes; {dataset.name} has "
            f"{len(dataset.classes)}: use roc_auc_ovr (one-vs-rest), log_loss, accuracy or "
            "f1_macro"
        )


def _read_source(spec: DataSpec, seed: int) -> pd.DataFrame:
    if spec.source == "boston":
        with resources.files("mlpipe").joinpath("data/boston.csv").open("rb") as handle:
            return pd.read_csv(handle)
    if spec.source == "diabetes":
        from sklearn.datasets import load_diabetes

        return load_diabetes(as_frame=True).frame
    if spec.source in CLASSIFICATION_SOURCES:
        import sklearn.datasets

        return getattr(sklearn.datasets, f"load_{spec.source}")(as_frame=True).frame
    if spec.source == "synthetic":
        from sklearn.datasets import make_regression

        X, y = make_regression(
            n_samples=spec.rows, n_features=spec.features, noise=spec.noise, random_state=seed
        )
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(spec.features)])
        frame["target"] = y
        return frame
    return read_table(Path(spec.source))


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every failure into a DataError that names the file."""
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"data.source {path}: not a built-in source ({', '.join(BUILTIN_SOURCES)}) "
            f"nor a file ending in {', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"data.source {path}: no such file")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data.source {path}: the file is empty") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"data.source {path}: cannot read it as {kind}: {exc}") from exc


def split_dataset(dataset: Dataset, test_size: float, seed: int) -> Split:
    """``train_test_split(X, y, test_size=test_size, random_state=seed)``, as sklearn does it;
    stratified by class (``stratify=y``) for classification."""
    from sklearn.model_selection import train_test_split

    n_test = int(np.ceil(test_size * len(dataset.y)))
    if n_test < 1 or len(dataset.y) - n_test < 2:
        raise DataError(
            f"data.test_size {test_size} leaves no usable split of {len(dataset.y)} rows"
        )
    stratify = None
    if dataset.classes is not None:
        counts = np.bincount(dataset.y.to_numpy(dtype=np.int64))
        if counts.min() < 2:
            lone = dataset.classes[int(np.argmin(counts))]
            raise DataError(
                f"data.target: class {lone!r} has 1 row; a stratified test split needs at "
                "least 2 of each class"
            )
        stratify = dataset.y
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            dataset.X, dataset.y, test_size=test_size, random_state=seed, stratify=stratify
        )
    except ValueError as exc:  # a test split smaller than the number of classes
        raise DataError(f"data.test_size {test_size}: {exc}") from exc
    return Split(
        X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test, frame=dataset.needs_frame
    )
