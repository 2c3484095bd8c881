"""The input contract: rows of feature values checked against a model's signature.

One contract for online, batch and stream scoring. It turns records (``{feature: value}``),
columns (``{feature: [values]}``) or a header plus rows into a float64 matrix in the signature's
column order, or raises ``InputError`` listing each problem with its row and field. Only finite
numbers pass: no strings, booleans, nulls, NaN or Infinity (as literals or strings), no missing
and no unknown features. An integer column (``long``, ``integer``) takes integers and integral
floats (``3`` or ``3.0``, as a CSV cell or a float64 column holds them), not ``3.5``.

The common case (every value a plain number) is checked with set and type tests and one numpy
conversion; the detailed walk runs only to explain a rejection. Batch scoring checks whole
columns instead (``require_columns``, ``check_columns``): a missing feature stops the run, a bad
value rejects its row only. Pure: no MLflow, no HTTP.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpipe.errors import MAX_PROBLEMS, InputError, Problem, UserError

# MLflow column types a numeric model can take; every one takes Python ints and floats (an
# integer column only integral ones).
NUMERIC_TYPES = ("double", "float", "long", "integer")
INTEGER_TYPES = frozenset({"long", "integer"})
_NUMBERS = frozenset({int, float})
_NONFINITE_WORDS = frozenset({"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


@dataclass(frozen=True)
class InputContract:
    """The features a model takes, in order, with their MLflow types."""

    names: tuple[str, ...]
    types: tuple[str, ...]

    def __post_init__(self) -> None:
        unsupported = {t for t in self.types if t not in NUMERIC_TYPES}
        if unsupported:
            raise UserError(
                f"the model's signature has column types {sorted(unsupported)}; mlpipe serves "
                f"models whose inputs are all numeric ({', '.join(NUMERIC_TYPES)}). A model "
                "trained on a table with categories predicts through MLflow for now "
                "(mlflow.pyfunc.load_model, `mlflow models serve`)"
            )
        object.__setattr__(self, "_name_set", frozenset(self.names))
        integers = [j for j, kind in enumerate(self.types) if kind in INTEGER_TYPES]
        object.__setattr__(self, "_integer_columns", np.array(integers, dtype=np.intp))

    @classmethod
    def from_signature_inputs(cls, inputs: Sequence[Mapping[str, Any]]) -> InputContract:
        """From MLflow's column specs (``signature.inputs.to_dict()``)."""
        if not inputs or any("name" not in spec for spec in inputs):
            raise UserError(
                "the model's signature has no named input columns; log it with a signature "
                "(mlpipe train does) to serve it"
            )
        return cls(tuple(s["name"] for s in inputs), tuple(s["type"] for s in inputs))

    def to_list(self) -> list[dict[str, str]]:
        return [{"name": n, "type": t} for n, t in zip(self.names, self.types, strict=True)]

    def matrix_from_records(self, records: Any) -> np.ndarray:
        """A list of ``{feature: number}`` objects as a (rows, features) float64 matrix."""
        _require_rows(records, "a list of records ({feature: number, ...})")
        names, name_set = self.names, self._name_set  # type: ignore[attr-defined]
        try:
            rows = [[record[n] for n in names] for record in records if record.keys() == name_set]
        except (AttributeError, TypeError):
            rows = []
        if len(rows) == len(records):
            matrix = self._to_matrix(rows)
            if matrix is not None:
                return matrix
        raise InputError(self._record_problems(records))

    def matrix_from_columns(self, columns: Any) -> np.ndarray:
        """``{feature: [values]}`` (one list per feature, equal lengths) as a matrix."""
        if not isinstance(columns, dict):
            raise InputError.single(
                f"expected an object of columns, got {_kind(columns)}", status=422
            )
        lengths = {len(v) if isinstance(v, list) else 1 for v in columns.values()}
        if len(lengths) > 1:
            raise InputError.single("the columns have different lengths", status=422)
        length = lengths.pop() if lengths else 0
        records = [
            {k: (v[i] if isinstance(v, list) else v) for k, v in columns.items()}
            for i in range(length)
        ]
        return self.matrix_from_records(records)

    def matrix_from_rows(self, header: Sequence[Any], rows: Any) -> np.ndarray:
        """A header of feature names plus rows of values (``dataframe_split``, CSV)."""
        if not isinstance(header, list | tuple) or not all(isinstance(h, str) for h in header):
            raise InputError.single("'columns' must be a list of feature names", status=422)
        _require_rows(rows, "a list of rows (lists of values)")
        width = len(header)
        if not all(isinstance(row, list | tuple) and len(row) == width for row in rows):
            bad = next(
                i for i, r in enumerate(rows) if not isinstance(r, list | tuple) or len(r) != width
            )
            raise InputError(
                [Problem(f"expected a list of {width} values, got {_kind(rows[bad])}", row=bad)]
            )
        return self.matrix_from_records([dict(zip(header, row, strict=True)) for row in rows])

    def require_columns(self, available: Sequence[str]) -> None:
        """Refuse a table that lacks a feature column (extra columns, such as ids, are fine)."""
        present = set(available)
        missing = [name for name in self.names if name not in present]
        if missing:
            raise InputError.single(
                f"the input lacks the model's feature column(s) {', '.join(missing)}; "
                f"it has {', '.join(available)}",
                status=422,
            )

    def check_columns(self, columns: ColumnValues) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Vectorised check of one batch: the (rows, features) matrix, a mask of valid rows, and
        one reason per invalid row, in row order. Only invalid rows pay for their reasons."""
        n = len(columns.values[0]) if columns.values else 0
        matrix = np.empty((n, len(self.names)), dtype=np.float64)
        bad = np.zeros(n, dtype=bool)
        for j, kind in enumerate(self.types):
            values = columns.values[j]
            matrix[:, j] = values
            column_bad = ~np.isfinite(values)
            if kind in INTEGER_TYPES:
                column_bad |= np.isfinite(values) & (values != np.round(values))
            bad |= column_bad
        valid = ~bad
        if valid.all():
            return matrix, valid, []
        reasons = []
        for i in np.flatnonzero(bad).tolist():
            problems = [
                f"field {name!r} {message}"
                for j, (name, kind) in enumerate(zip(self.names, self.types, strict=True))
                if (message := columns.problem(i, j, kind))
            ]
            reasons.append("; ".join(problems))
        return matrix, valid, reasons

    def _to_matrix(self, rows: list[list[Any]]) -> np.ndarray | None:
        for row in rows:
            for value in row:
                if type(value) not in _NUMBERS:  # type(), not isinstance: bool is an int
                    return None
        try:
            matrix = np.array(rows, dtype=np.float64)
        except OverflowError:  # an integer beyond float64's range
            return None
        if not np.isfinite(matrix).all():
            return None
        matrix = matrix.reshape(len(rows), len(self.names))
        columns: np.ndarray = self._integer_columns  # type: ignore[attr-defined]
        integers = matrix[:, columns]
        if integers.size and (integers != np.round(integers)).any():
            return None  # 3.5 for an integer column: the slow path names it
        return matrix

    def _record_problems(self, records: Sequence[Any]) -> list[Problem]:
        problems: list[Problem] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                problems.append(
                    Problem(f"expected an object of features, got {_kind(record)}", row=i)
                )
                continue
            for name in self.names:
                if name not in record:
                    problems.append(Problem("missing feature", field=name, row=i))
            for name in record:
                if name not in self._name_set:  # type: ignore[attr-defined]
                    problems.append(
                        Problem(
                            f"unknown feature; the model takes {', '.join(self.names)}",
                            field=str(name),
                            row=i,
                        )
                    )
            for name, kind in zip(self.names, self.types, strict=True):
                if name in record and (message := _value_problem(record[name], kind)):
                    problems.append(Problem(message, field=name, row=i))
            if len(problems) > MAX_PROBLEMS:
                break
        return problems or [Problem("the input could not be read as numbers")]


@dataclass(frozen=True)
class ColumnValues:
    """One batch of feature columns as float64 (NaN where a value was null or not a number),
    with what the reader saw there, so a rejection can say which it was."""

    values: list[np.ndarray]  # one per feature, in the contract's order
    nulls: list[np.ndarray | None]  # where the reader saw no value
    texts: list[np.ndarray | None]  # the original strings, for text columns

    def problem(self, row: int, column: int, kind: str) -> str | None:
        """Why the value at (``row``, ``column``) is not a valid ``kind``, or None."""
        nulls, texts = self.nulls[column], self.texts[column]
        if nulls is not None and nulls[row]:
            return "is empty (null); a number is required"
        value = float(self.values[column][row])
        if texts is not None and not math.isfinite(value):
            return _value_problem(str(texts[row]), kind)
        if math.isnan(value):
            return "is NaN; NaN and Infinity are not accepted"
        if math.isinf(value):
            return f"is {value}; NaN and Infinity are not accepted"
        if kind in INTEGER_TYPES and value != round(value):
            return f"is {value}; an integer is required"
        return None


def _require_rows(rows: Any, expected: str) -> None:
    if not isinstance(rows, list):
        raise InputError.single(f"expected {expected}, got {_kind(rows)}", status=422)
    if not rows:
        raise InputError.single("the input has no rows; send at least one", status=422)


def _value_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not a valid ``kind`` feature value, or None."""
    if value is None:
        return "is null; a number is required"
    if isinstance(value, bool):
        return f"is a boolean ({json.dumps(value)}); a number is required"
    if isinstance(value, str):
        if value.strip().lower() in _NONFINITE_WORDS:
            return f"is the string {value!r}; NaN and Infinity are not accepted, send a number"
        return f"is a string ({value[:40]!r}); a number is required"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value}; NaN and Infinity are not accepted"
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > sys.float_info.max:
            return "is an integer too large for a float64"
        return None
    if isinstance(value, float):
        if kind in INTEGER_TYPES and value != round(value):
            return f"is {value}; an integer is required"
        return None
    return f"is {_kind(value)}; a number is required"


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)
