"""``mlpipe up``, ``status`` and ``down``: the local stack (Prefect server, MLflow server, a
process worker) in the background."""

from __future__ import annotations

from typing import Annotated

import typer

from mlpipe.cli.common import Verbose, user_errors
from mlpipe.settings import DEFAULT_POOL


def use_running_stack() -> None:
    """While `mlpipe up`'s stack runs, commands use it unless the environment names others."""
    import os

    from mlpipe.deploy.stack import active

    if "PREFECT_API_URL" in os.environ and "MLFLOW_TRACKING_URI" in os.environ:
        return
    stack = active()
    if stack is not None:
        # As a user's `export` would: Prefect, MLflow and every process they start (task
        # runners, workers) read these variables themselves; mlpipe's own code gets them from
        # Settings.from_env() like any other value of the environment.
        for name, value in stack.environment().items():
            os.environ.setdefault(name, value)


@user_errors
def up(
    prefect_port: Annotated[int, typer.Option(help="Prefect server port (0: any free).")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port (0: any free).")] = 5000,
    pool: Annotated[str, typer.Option(help="the process work pool of the worker.")] = DEFAULT_POOL,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="MLflow's artifact store: s3://BUCKET/PREFIX (served through MLflow: clients "
            "need no S3 credentials; MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL for S3-compatible "
            "stores). Default: a folder under MLPIPE_HOME."
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Start a local Prefect server, MLflow server and process worker in the background."""
    from mlpipe.deploy import stack as local

    folder = local.state_dir()
    typer.echo(f"starting the stack in {folder} (logs in {folder / 'logs'}) ...", err=True)
    started = local.up(folder, prefect_port, mlflow_port, pool, artifacts=artifacts)
    for service in started.services:
        typer.echo(f"{service.name:<8} pid {service.pid:<8} {service.url}")
    ui = started.prefect_api_url.removesuffix("/api")
    typer.echo(f"Prefect UI {ui}   MLflow UI {started.mlflow_url}")
    if artifacts:
        typer.echo(f"MLflow artifacts in {artifacts} (through the MLflow server)")
    typer.echo("mlpipe train, score and serve use this stack while it runs; for other tools:")
    for name, value in started.environment().items():
        typer.echo(f"export {name}={value}")


@user_errors
def status(verbose: Verbose = False) -> None:
    """Show whether the stack `mlpipe up` started is running and answering."""
    from mlpipe.deploy import stack as local

    folder = local.state_dir()
    found = local.Stack.load(folder)
    if found is None:
        typer.echo(f"no stack recorded in {folder}; start one with mlpipe up")
        raise typer.Exit(code=3)
    rows = local.status(found)
    for service, running, answering in rows:
        state = "up" if answering else ("starting/not answering" if running else "stopped")
        typer.echo(f"{service.name:<8} pid {service.pid:<8} {state:<24} {service.url}")
    if not all(answering for _, _, answering in rows):
        raise typer.Exit(code=1)


@user_errors
def down(verbose: Verbose = False) -> None:
    """Stop the processes `mlpipe up` started (by their recorded pids)."""
    from mlpipe.deploy import stack as local

    found = local.Stack.load(local.state_dir())
    if found is None:
        typer.echo("no stack is recorded; nothing to stop")
        return
    stopped = local.down(found)
    typer.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
