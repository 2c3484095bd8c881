"""``mlpipe init`` (an example spec) and ``mlpipe version``."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from mlpipe.cli.common import Verbose, fail, user_errors


@user_errors
def init(
    path: Annotated[Path, typer.Argument(help="where to write the example spec")] = Path(
        "mlpipe.yaml"
    ),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
    verbose: Verbose = False,
) -> None:
    """Write an example pipeline spec (the defaults, commented)."""
    from mlpipe.spec import EXAMPLE_SPEC

    if path.exists() and not force:
        raise fail(f"{path} exists; pass --force to overwrite it")
    path.write_text(EXAMPLE_SPEC)
    typer.echo(f"wrote {path}; run it with: mlpipe train --config {path}")


@user_errors
def version(verbose: Verbose = False) -> None:
    """Print the versions of mlpipe and the stack it runs on."""
    for name in ("mlpipe", "prefect", "mlflow", "scikit-learn", "xgboost-cpu"):
        try:
            typer.echo(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            typer.echo(f"{name} not installed")
