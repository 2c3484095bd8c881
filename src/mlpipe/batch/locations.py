"""What ``--input`` and ``--output`` of ``mlpipe score`` name: a file or folder, or a database.

A database is a SQLAlchemy URL, ``env:VARIABLE`` (the URL in a variable) or ``secret:BLOCK`` (a
Prefect Secret block holding it); see ``sql.resolve_url``. Prefect is imported only to read a
secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlpipe.batch.score import SqlTarget
from mlpipe.batch.sql import SqlSource, is_database, parse_pairs, resolve_url
from mlpipe.errors import UserError


def resolve_ends(
    input: str,
    output: str,
    table: str | None = None,
    query: str | None = None,
    params: Sequence[str] = (),
    output_table: str | None = None,
    partition: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Path | SqlSource, Path | SqlTarget]:
    """The input (a path or ``SqlSource``) and output (a path or ``SqlTarget``) asked for."""
    pairs = parse_pairs([partition] if partition else [], "--partition")
    source: Path | SqlSource
    if is_database(input):
        url = resolve_url(input, "--input", environ, prefect_secret)
        source = SqlSource(url, table, query, pairs | parse_pairs(list(params), "--param"))
    elif table or query or params:
        raise UserError("--table, --query and --param are for a database --input")
    else:
        source = Path(input)
    if is_database(output):
        if not output_table:
            raise UserError("--output is a database: name the table with --output-table")
        url = resolve_url(output, "--output", environ, prefect_secret)
        return source, SqlTarget(url, output_table, next(iter(pairs.items()), None))
    if output_table or (partition and not is_database(input)):
        raise UserError("--output-table and --partition are for a database --output")
    if Path(output).suffix.lower() != ".parquet":
        raise UserError(
            f"--output {output}: predictions are written as Parquet; name the file "
            f"{Path(output).with_suffix('.parquet').name}, or give a database URL"
        )
    return source, Path(output)


def prefect_secret(name: str) -> str:
    """The value of a Prefect Secret block (a database URL with its password)."""
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync from a sync caller
        value = block.get()
    except ValueError as exc:
        raise UserError(f"secret:{name}: no Prefect Secret block of that name ({exc})") from None
    return str(value)
