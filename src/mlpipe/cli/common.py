"""What every command shares: the one error wrapper, ``--verbose``, the environment's settings.

A command parses its options, calls one function and renders the result (``render.py``). A
``UserError`` anywhere below becomes one line on stderr and exit status 2, a ``TuningError``
exit status 1; ``--verbose`` shows the traceback instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from mlpipe.errors import TuningError, UserError
from mlpipe.settings import Settings

Command = TypeVar("Command", bound=Callable[..., Any])

Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="full tracebacks (train: also Prefect's and MLflow's logs)."
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def user_errors(command: Command) -> Command:
    """Run ``command`` with mlpipe's errors turned into one line and an exit status."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if kwargs.get("verbose"):
                raise
            hint = "\n(run with --verbose for the full exception)" if exc.__cause__ else ""
            raise fail(f"{exc}{hint}") from None
        except TuningError as exc:
            if kwargs.get("verbose"):
                raise
            raise fail(str(exc), code=1) from None

    return run  # type: ignore[return-value]


def settings() -> Settings:
    """The environment as this command sees it (after `mlpipe up`'s stack filled it in)."""
    return Settings.from_env()
