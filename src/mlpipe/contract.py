"""The input contract: rows of feature values checked against a model's signature.

One contract for online, batch and stream scoring. It turns records (``{feature: value}``),
columns (``{feature: [values]}``) or a header plus rows into a float64 matrix in the signature's
column order, or raises ``InputError`` listing each problem with its row and field. A numeric
field takes finite numbers only: no strings, booleans, NaN or Infinity (as literals or strings).
An integer column (``long``, ``integer``) takes integers and integral floats (``3`` or ``3.0``,
as a CSV cell or a float64 column holds them), not ``3.5``. No missing and no unknown features.

A model trained on a table with categories (``columns.json`` beside it: ``categories``) takes a
string in a categorical field (an integer in an integer-coded one), which the matrix holds as
its code: its position in the training split's sorted categories, ``len(categories)`` for one
never seen there (scored by the family's rule, and counted: ``unseen``). A field the signature
marks optional takes a missing value (null, NaN, an empty CSV cell), held as NaN; a ``boolean``
field takes true or false, held as 1/0. ``frame`` turns such a matrix back into the table the
model's pipeline takes.

The common case (every value a plain number) is checked with set and type tests and one numpy
conversion; the detailed walk runs only to explain a rejection. Batch scoring checks whole
columns instead (``require_columns``, ``check_columns``): a missing feature stops the run, a bad
value rejects its row only. Pure: no MLflow, no HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlpipe.errors import MAX_PROBLEMS, InputError, Problem, UserError
from mlpipe.values import (
    INTEGER_TYPES,
    NUMBERS,
    ColumnValues,
    field_code,
    is_missing,
    kind_of,
    value_problem,
)

__all__ = ["ColumnValues", "InputContract", "InputError"]

# MLflow column types a numeric model can take; every one takes Python ints and floats (an
# integer column only integral ones).
NUMERIC_TYPES = ("double", "float", "long", "integer")
# a model of a table with categories (its column step casts them) takes these too
TABLE_TYPES = ("string", "boolean")
UNSEEN = "\x00unseen"  # what an unseen category's code decodes to: no category is spelled so


@dataclass(frozen=True)
class InputContract:
    """The features a model takes, in order, with their MLflow types; the columns that may be
    missing (``optional``) and each categorical column's categories, in code order."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    optional: frozenset[str] = frozenset()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = NUMERIC_TYPES + (TABLE_TYPES if self.categories else ())
        unsupported = {t for t in self.types if t not in allowed}
        strings = [n for n, t in zip(self.names, self.types, strict=True) if t == "string"]
        if unsupported or any(n not in self.categories for n in strings):
            raise UserError(
                f"the model's signature has column types {sorted(unsupported or {'string'})}; "
                f"mlpipe serves models whose inputs are numeric ({', '.join(NUMERIC_TYPES)}), "
                "and string columns of the models it trained on tables with categories (their "
                "columns.json names the categories)"
            )
        object.__setattr__(self, "_name_set", frozenset(self.names))
        integers = [j for j, kind in enumerate(self.types) if kind in INTEGER_TYPES]
        object.__setattr__(self, "_integer_columns", np.array(integers, dtype=np.intp))
        lookups = {
            name: {c: k for k, c in enumerate(cats)} for name, cats in self.categories.items()
        }
        object.__setattr__(self, "_lookups", lookups)
        # the plain case (every field a required number) keeps the one-conversion fast path
        plain = not self.optional and not self.categories
        object.__setattr__(self, "_plain", plain)

    @classmethod
    def from_signature_inputs(
        cls, inputs: Sequence[Mapping[str, Any]], categories: Mapping[str, Sequence[str]] = {}
    ) -> InputContract:
        """From MLflow's column specs (``signature.inputs.to_dict()``) and the categories of
        the model's ``columns.json`` (none for a table of numbers)."""
        if not inputs or any("name" not in spec for spec in inputs):
            raise UserError(
                "the model's signature has no named input columns; log it with a signature "
                "(mlpipe train does) to serve it"
            )
        return cls(
            tuple(s["name"] for s in inputs),
            tuple(s["type"] for s in inputs),
            frozenset(s["name"] for s in inputs if s.get("required") is False),
            {name: tuple(values) for name, values in categories.items()},
        )

    @property
    def columns(self) -> list[tuple[int, str, str]]:
        """(position, name, type) of each feature."""
        return [(j, n, t) for j, (n, t) in enumerate(zip(self.names, self.types, strict=True))]

    def unseen(self, matrix: np.ndarray) -> dict[str, int]:
        """Per categorical feature, the rows of ``matrix`` holding a category never seen in
        training (only those with some)."""
        counts = {}
        for j, name, _ in self.columns:
            if name in self.categories:
                count = int((matrix[:, j] == len(self.categories[name])).sum())
                if count:
                    counts[name] = count
        return counts

    def missing(self, matrix: np.ndarray) -> dict[str, int]:
        """Per optional feature, the rows of ``matrix`` where it is missing (only those with
        some)."""
        counts = {}
        for j, name, _ in self.columns:
            if name in self.optional:
                count = int(np.isnan(matrix[:, j]).sum())
                if count:
                    counts[name] = count
        return counts

    def codes(self, name: str, values: np.ndarray) -> np.ndarray:
        """A categorical column's values (strings, or numbers for integer codes; None, NaN or
        blank where missing) as the matrix holds them: codes, ``len(categories)`` for an
        unseen one, NaN for a missing one."""
        import pandas as pd

        lookup = self._lookups[name]  # type: ignore[attr-defined]
        series = pd.Series(values, dtype=object)
        missing = (series.isna() | (series == "")).to_numpy()
        if values.dtype.kind in "iuf":  # integer codes: 3 and 3.0 are the category "3"
            series = series.map(lambda v: str(int(v)) if float(v).is_integer() else str(v))
        codes = np.array(series.map(lookup).to_numpy(dtype=np.float64, na_value=np.nan))
        codes[np.isnan(codes)] = len(lookup)
        codes[missing] = np.nan
        return codes

    def frame(self, matrix: np.ndarray) -> Any:
        """``matrix`` as the table the model takes: a categorical code as its category (an
        unseen one as ``UNSEEN``), NaN as missing."""
        import pandas as pd

        frame = pd.DataFrame(matrix, columns=list(self.names))
        for name, cats in self.categories.items():
            codes = frame[name].to_numpy()
            known = np.asarray([*cats, UNSEEN], dtype=object)
            present = ~np.isnan(codes)
            decoded = np.full(len(codes), np.nan, dtype=object)
            decoded[present] = known[codes[present].astype(np.intp)]
            frame[name] = pd.Series(decoded, dtype=object)
        return frame

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
                f"expected an object of columns, got {kind_of(columns)}", status=422
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
                [Problem(f"expected a list of {width} values, got {kind_of(rows[bad])}", row=bad)]
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
        for j, name, kind in self.columns:
            values = columns.values[j]
            matrix[:, j] = values
            column_bad = ~np.isfinite(values)
            if name in self.categories:  # codes: a missing value, or text no integer code
                column_bad = (column_bad & (name not in self.optional)) | columns.unparsed(j)
            elif name in self.optional:  # missing is fine; text that is no number is not
                column_bad &= ~(np.isnan(values) & ~columns.unparsed(j))
            if kind in INTEGER_TYPES and name not in self.categories:
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
                if (
                    message := columns.problem(
                        i, j, kind, name in self.categories, name in self.optional
                    )
                )
            ]
            reasons.append("; ".join(problems))
        return matrix, valid, reasons

    def _to_matrix(self, rows: list[list[Any]]) -> np.ndarray | None:
        if not self._plain:  # type: ignore[attr-defined]
            return self._encode(rows)
        for row in rows:
            for value in row:
                if type(value) not in NUMBERS:  # type(), not isinstance: bool is an int
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

    def _encode(self, rows: list[list[Any]]) -> np.ndarray | None:
        """Rows of a contract with categories, booleans or optional fields, column by column;
        None at the first value it does not take (the slow path names it)."""
        matrix = np.empty((len(rows), len(self.names)), dtype=np.float64)
        for j, name, kind in self.columns:
            optional = name in self.optional
            lookup = self._lookups.get(name)  # type: ignore[attr-defined]
            column = matrix[:, j]
            for i, row in enumerate(rows):
                code = field_code(row[j], kind, optional, lookup)
                if code is None:
                    return None
                column[i] = code
        return matrix

    def _record_problems(self, records: Sequence[Any]) -> list[Problem]:
        problems: list[Problem] = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                problems.append(
                    Problem(f"expected an object of features, got {kind_of(record)}", row=i)
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
                if name not in record:
                    continue
                message = self._field_problem(name, kind, record[name])
                if message:
                    problems.append(Problem(message, field=name, row=i))
            if len(problems) > MAX_PROBLEMS:
                break
        return problems or [Problem("the input could not be read as numbers")]

    def _field_problem(self, name: str, kind: str, value: Any) -> str | None:
        if self._plain:  # type: ignore[attr-defined]
            return value_problem(value, kind)
        lookup = self._lookups.get(name)  # type: ignore[attr-defined]
        if field_code(value, kind, name in self.optional, lookup) is not None:
            return None
        if lookup is None and kind != "boolean":
            return value_problem(value, kind)
        wanted = "true or false"
        if lookup is not None:
            wanted = "an integer code" if kind in INTEGER_TYPES else "a category (a string)"
        if is_missing(value) or value == "":
            what = "null" if value is None else "empty" if value == "" else "NaN"
            return f"is {what}; {wanted} is required (the model was trained with none missing)"
        return f"is {kind_of(value)} ({json.dumps(value)}); {wanted} is required"


def _require_rows(rows: Any, expected: str) -> None:
    if not isinstance(rows, list):
        raise InputError.single(f"expected {expected}, got {kind_of(rows)}", status=422)
    if not rows:
        raise InputError.single("the input has no rows; send at least one", status=422)
