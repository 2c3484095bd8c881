"""One value of a feature, and one batch's columns of values: what a field takes, and the message
for what it does not. The input contract (``contract.py``) checks rows with these; batch scoring
reads whole columns into ``ColumnValues``. Pure: numpy only.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

INTEGER_TYPES = frozenset({"long", "integer"})
NUMBERS = frozenset({int, float})
_NONFINITE_WORDS = frozenset({"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


@dataclass(frozen=True)
class ColumnValues:
    """One batch of feature columns as float64 (NaN where a value was null or not a number),
    with what the reader saw there, so a rejection can say which it was."""

    values: list[np.ndarray]  # one per feature, in the contract's order
    nulls: list[np.ndarray | None]  # where the reader saw no value
    texts: list[np.ndarray | None]  # the original strings, for text columns

    def unparsed(self, column: int) -> np.ndarray:
        """Where the column held text that is no number (and no missing value: NaN, blank)."""
        texts = self.texts[column]
        if texts is None:
            return np.zeros(len(self.values[column]), dtype=bool)
        return np.array(
            [isinstance(t, str) and t.strip().lower() not in ("", "nan") for t in texts]
        ) & np.isnan(self.values[column])

    def problem(
        self, row: int, column: int, kind: str, categorical: bool = False, optional: bool = False
    ) -> str | None:
        """Why the value at (``row``, ``column``) is not a valid ``kind``, or None (a missing
        value is valid where ``optional``; a category's code always is)."""
        nulls, texts = self.nulls[column], self.texts[column]
        value = float(self.values[column][row])
        if categorical and texts is not None and self.unparsed(column)[row]:  # integer-coded
            return f"is a string ({str(texts[row])[:40]!r}); an integer code is required"
        null = (nulls is not None and bool(nulls[row])) or (categorical and math.isnan(value))
        if null or categorical:
            if not null or optional:
                return None
            wanted = "a category (a string)" if categorical else "a number"
            return f"is empty (null); {wanted} is required"
        if optional and math.isnan(value) and not self.unparsed(column)[row]:
            return None  # NaN or a blank cell: missing, which this field takes
        if texts is not None and not math.isfinite(value):
            return value_problem(str(texts[row]), kind)
        if math.isnan(value):
            return "is NaN; NaN and Infinity are not accepted"
        if math.isinf(value):
            return f"is {value}; NaN and Infinity are not accepted"
        if kind in INTEGER_TYPES and value != round(value):
            return f"is {value}; an integer is required"
        return None


def is_missing(value: Any) -> bool:
    return value is None or (type(value) is float and math.isnan(value))


def field_code(
    value: Any, kind: str, optional: bool, lookup: dict[str, int] | None
) -> float | None:
    """The matrix value of one field, or None when the field does not take ``value``."""
    if is_missing(value) or (lookup is not None and value == ""):  # "": an empty CSV cell
        return math.nan if optional else None
    kind_of = type(value)
    if lookup is not None:
        if kind not in INTEGER_TYPES:
            return float(lookup.get(value, len(lookup))) if kind_of is str else None
        if kind_of in NUMBERS and math.isfinite(value) and float(value).is_integer():
            return float(lookup.get(str(int(value)), len(lookup)))  # an integer code: "3"
        return None
    if kind == "boolean":
        return float(value) if kind_of is bool else None
    if kind_of not in NUMBERS:
        return None
    number = float(value)
    if not math.isfinite(number) or (kind in INTEGER_TYPES and not number.is_integer()):
        return None
    return number


def value_problem(value: Any, kind: str) -> str | None:
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
    return f"is {kind_of(value)}; a number is required"


def kind_of(value: Any) -> str:
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
