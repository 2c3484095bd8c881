"""mlpipe's exceptions: one small hierarchy, so the CLI can tell a user's mistake from a bug.

    MlpipeError
     +-- UserError              bad input the user can fix; the CLI prints one line, exits 2
     |    +-- SpecError         the pipeline spec (YAML, flags) is invalid
     |    +-- DataError         the data cannot be read or does not fit the spec
     |    +-- InputError        rows that break a model's input contract (with an HTTP status)
     |    |    +-- TooLarge     a request body over the server's limit (serve/endpoints.py)
     |    +-- RejectLimitError  more bad rows than --max-rejects; nothing was written
     |    +-- StreamError       a Kinesis stream is missing or cannot be reached
     +-- TuningError            the search produced nothing usable (every trial failed)

Third-party errors are wrapped with ``raise ... from exc`` so the cause stays visible with
``--verbose``. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_PROBLEMS = 20  # a 10,000-row batch of bad rows gets a readable error, not a 10,000-line one


class MlpipeError(Exception):
    """Base class of every error mlpipe raises on purpose."""


class UserError(MlpipeError):
    """Input the user can correct; shown as one line, exit status 2."""


class SpecError(UserError):
    """The pipeline spec is invalid."""


class DataError(UserError):
    """The data cannot be loaded or does not match the spec."""


@dataclass(frozen=True)
class Problem:
    """One reason an input was refused: where (row, field) and what is wrong."""

    message: str
    field: str | None = None
    row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = " ".join(
            part
            for part in (
                f"row {self.row}" if self.row is not None else "",
                f"field {self.field!r}" if self.field is not None else "",
            )
            if part
        )
        return f"{where}: {self.message}" if where else self.message


class InputError(UserError):
    """The input breaks the contract. ``status`` is the HTTP status a server should answer."""

    def __init__(self, problems: Sequence[Problem], status: int = 422) -> None:
        self.problems = list(problems)[:MAX_PROBLEMS]
        self.status = status
        text = "; ".join(str(p) for p in self.problems)
        super().__init__(text + ("; and more" if len(problems) > MAX_PROBLEMS else ""))

    @classmethod
    def single(cls, message: str, status: int = 400, field: str | None = None) -> InputError:
        return cls([Problem(message, field=field)], status=status)


class RejectLimitError(UserError):
    """More rows were rejected than the caller allowed; nothing was written."""


class StreamError(UserError):
    """A stream is missing or cannot be reached."""


class TuningError(MlpipeError):
    """The search produced no usable trial."""
