"""The ``mlpipe`` command, one module per command group, composed here.

- ``train``, ``serve``, ``score``: the three stages; ``deploy`` (``mlpipe deploy ...`` and
  ``backfill``); ``stack`` (``up``, ``status``, ``down``); ``stream`` (``mlpipe stream ...``);
  ``project`` (``init``, ``version``).
- ``common``: the one error wrapper (a ``UserError`` becomes one line and exit 2; ``--verbose``
  on every command shows the traceback) and the environment's settings.
- ``render``: summaries, tables and progress bars.

Heavy imports (prefect, mlflow, sklearn, rich) happen inside the commands, so ``mlpipe --help``
is instant.
"""

from __future__ import annotations

import time

PROCESS_STARTED = time.perf_counter()  # before the heavy imports, for the cold-start figure

import typer  # noqa: E402

from mlpipe.cli import deploy, project, score, serve, stack, stream, train  # noqa: E402
from mlpipe.settings import apply_library_defaults  # noqa: E402

app = typer.Typer(
    rich_markup_mode="markdown",  # a docstring's line breaks join into one paragraph
    help="mlpipe: tune, register, serve and batch-score models, with Prefect and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def environment() -> None:
    """Before any command (and before Prefect or MLflow is imported): the libraries' switches
    mlpipe sets unless you did (``settings.LIBRARY_DEFAULTS``), then `mlpipe up`'s stack."""
    apply_library_defaults()
    stack.use_running_stack()


app.command()(train.train)
app.command()(serve.serve)
app.command()(score.score)
app.add_typer(deploy.app, name="deploy")
app.command()(deploy.backfill)
app.add_typer(stream.app, name="stream")
app.command()(stack.up)
app.command()(stack.status)
app.command()(stack.down)
app.command()(project.init)
app.command()(project.version)

if __name__ == "__main__":
    app()
