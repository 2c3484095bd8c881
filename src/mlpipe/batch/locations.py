"""What ``--input`` and ``--output`` of ``mlpipe score`` name: a file or folder, an object or
prefix on S3 (``s3://BUCKET/KEY``; ``objects.py``), or a database.

A database is a SQLAlchemy URL, ``env:VARIABLE`` (the URL in a variable) or ``secret:BLOCK`` (a
Prefect Secret block holding it); see ``sql.resolve_url``. Prefect is imported only to read a
secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from mlpipe.batch import objects
from mlpipe.batch.files import FileSet
from mlpipe.batch.multipart import S3Object
from mlpipe.batch.score import ParquetTarget, SqlTarget, Target, rejects_path_for
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
    store: objects.ObjectStore | None = None,
) -> tuple[Path | FileSet | SqlSource, Path | Target]:
    """The input (a path, objects or ``SqlSource``) and output (a path or a target) asked for.
    ``store`` is the S3 client to use (default: one from the environment, made when needed)."""
    pairs = parse_pairs([partition] if partition else [], "--partition")
    source: Path | FileSet | SqlSource
    if is_database(input):
        url = resolve_url(input, "--input", environ, prefect_secret)
        source = SqlSource(url, table, query, pairs | parse_pairs(list(params), "--param"))
    elif table or query or params:
        raise UserError("--table, --query and --param are for a database --input")
    elif objects.is_s3(input):
        store = store or objects.ObjectStore.from_env(environ)
        source = s3_input(store, objects.S3Url.parse(input, "--input"))
    else:
        source = Path(input)
    if is_database(output):
        if not output_table:
            raise UserError("--output is a database: name the table with --output-table")
        url = resolve_url(output, "--output", environ, prefect_secret)
        return source, SqlTarget(url, output_table, next(iter(pairs.items()), None))
    if output_table or (partition and not is_database(input)):
        raise UserError("--output-table and --partition are for a database --output")
    if objects.is_s3(output):
        store = store or objects.ObjectStore.from_env(environ)
        return source, s3_output(store, objects.S3Url.parse(output, "--output"))
    _check_parquet(output)
    return source, Path(output)


def _check_parquet(output: str) -> None:
    if Path(output).suffix.lower() != ".parquet":
        raise UserError(
            f"--output {output}: predictions are written as Parquet; name the file "
            f"{Path(output).with_suffix('.parquet').name}, or give a database URL"
        )


def s3_input(store: objects.ObjectStore, url: objects.S3Url) -> FileSet:
    """The data objects at ``url`` (one object, or a prefix read like a folder)."""
    files, fmt = store.data_files(url)
    return FileSet(str(url), files, fmt, store.fetch, local=False)


def s3_output(
    store: objects.ObjectStore, url: objects.S3Url, rejects: objects.S3Url | None = None
) -> ParquetTarget:
    """Predictions at ``url`` (an object, checked not to be a prefix), rejects beside it."""
    store.check_output(url)
    _check_parquet(str(url))
    rejects = rejects or url.with_name(rejects_path_for(Path(url.name)).name)
    return ParquetTarget(S3Object(store, url), S3Object(store, rejects))


def prefect_secret(name: str) -> str:
    """The value of a Prefect Secret block (a database URL with its password)."""
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync from a sync caller
        value = block.get()
    except ValueError as exc:
        raise UserError(f"secret:{name}: no Prefect Secret block of that name ({exc})") from None
    return str(value)


# -- the batch_score flow's roots: a local folder or an S3 prefix, as strings (flow parameters) --


@cache
def default_store() -> objects.ObjectStore:
    """The S3 client of this process, from its environment (made on first use)."""
    return objects.ObjectStore.from_env()


def absolute(root: str | os.PathLike[str]) -> str:
    """A root as a flow parameter: an S3 URL as given, a local folder made absolute (runs
    start in other folders)."""
    return root if objects.is_s3(root) else str(Path(root).resolve())  # type: ignore[return-value]


def join(root: str, *parts: str) -> str:
    if objects.is_s3(root):
        return str(objects.S3Url.parse(root).joinpath(*parts))
    return str(Path(root, *parts))


def exists(location: str) -> bool:
    if objects.is_s3(location):
        return default_store().exists(objects.S3Url.parse(location))
    return Path(location).exists()


def data_files(location: str) -> FileSet:
    """The data files of a local folder or an S3 prefix (``DataError`` when there are none)."""
    if objects.is_s3(location):
        return s3_input(default_store(), objects.S3Url.parse(location).joinpath(""))
    return FileSet.at(Path(location))


def parquet_output(output: str, rejects: str) -> ParquetTarget:
    if objects.is_s3(output):
        store = default_store()
        return s3_output(store, objects.S3Url.parse(output), objects.S3Url.parse(rejects))
    return ParquetTarget.local(Path(output), Path(rejects))


def write_text(location: str, text: str) -> None:
    """A small file (a report) at ``location``, whole or not at all."""
    if objects.is_s3(location):
        default_store().put_text(objects.S3Url.parse(location), text)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def subfolders(root: str) -> list[str]:
    """The names of the folders (S3: common prefixes) directly under ``root``, in order."""
    if objects.is_s3(root):
        return default_store().folders(objects.S3Url.parse(root))
    folder = Path(root)
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
