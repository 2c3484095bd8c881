"""mlpipe's exceptions: one small hierarchy, so the CLI can tell a user's mistake from a bug.

    MlpipeError
     +-- UserError          bad input the user can fix; the CLI prints one line, exits 2
     |    +-- SpecError     the pipeline spec (YAML, flags) is invalid
     |    +-- DataError     the data cannot be read or does not fit the spec
     +-- TuningError        the search produced nothing usable (every trial failed)

Third-party errors are wrapped with ``raise ... from exc`` so the cause stays visible with
``--verbose``. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class MlpipeError(Exception):
    """Base class of every error mlpipe raises on purpose."""


class UserError(MlpipeError):
    """Input the user can correct; shown as one line, exit status 2."""


class SpecError(UserError):
    """The pipeline spec is invalid."""


class DataError(UserError):
    """The data cannot be loaded or does not match the spec."""


class TuningError(MlpipeError):
    """The search produced no usable trial."""
