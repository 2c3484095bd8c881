"""A database table or query as a batch source, and a table as a batch sink (SQLAlchemy).

Where the URL comes from (never with a password on the command line, where shell history and
process lists keep it):
- ``postgresql://user@host/db``: the password from libpq's own ``PGPASSWORD`` or ``~/.pgpass``;
- ``env:NAME``: the whole URL from the environment variable NAME;
- ``secret:NAME``: the whole URL from a Prefect Secret block (the caller passes the loader);
- ``sqlite:///shop.db``: the embedded default, no credentials.
URLs are shown with the password masked (``***``) wherever mlpipe prints or logs them.

Reading (``SqlSource``): the query runs once and rows come back ``batch_rows`` at a time through a
server-side cursor (SQLAlchemy ``stream_results`` + ``yield_per``; psycopg declares a named
cursor), so memory stays a few batches whatever the table size.

Writing (``sql_sink.SqlSink``): one transaction per partition. The sink takes a lock on the
partition (PostgreSQL: an advisory transaction lock; SQLite locks the file), creates the table
when it is missing, deletes the partition's earlier rows and inserts the new ones (PostgreSQL:
``COPY ... FROM STDIN`` in CSV; others: executemany), and commits once at the end. A run that
fails or is killed leaves the table as it was; a rerun replaces the partition's rows, never
duplicates them. A partition is a ``KEY=VALUE`` pair stored in a text column KEY; without one,
the whole table is the partition. Rejected rows go to ``TABLE_rejects`` in the same transaction.

No Prefect, no MLflow.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from mlpipe.errors import DataError, UserError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\+[A-Za-z0-9_]+)?://")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NOT_DATABASES = ("file", "http", "https", "s3", "gs", "models", "runs")


def is_database(text: str) -> bool:
    """True for a database URL (``postgresql://...``, ``sql+sqlite:///...``), ``env:`` or
    ``secret:``; False for a file path."""
    if text.startswith(("env:", "secret:", "sql+")):
        return True
    match = _URL.match(text)
    return bool(match) and text.split(":", 1)[0].split("+")[0].lower() not in NOT_DATABASES


def resolve_url(
    text: str,
    option: str,
    environ: Mapping[str, str],
    load_secret: Callable[[str], str] | None = None,
) -> Any:
    """The SQLAlchemy URL that ``text`` names (see the module docstring)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    kind, _, name = text.partition(":")
    if kind == "env":
        value = environ.get(name)
        if not value:
            raise UserError(f"{option} env:{name}: the environment variable {name} is not set")
    elif kind == "secret":
        if load_secret is None:
            raise UserError(f"{option} secret:{name}: Prefect Secret blocks are not available here")
        value = load_secret(name)
    else:
        value = text.removeprefix("sql+")
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise UserError(f"{option}: not a database URL ({exc})") from None
    if url.password is not None and kind not in ("env", "secret"):
        raise UserError(
            f"{option}: the URL holds a password, which shell history and process lists would "
            "keep; give it through PGPASSWORD or ~/.pgpass, or the whole URL through "
            f"{option} env:VARIABLE or {option} secret:PREFECT_SECRET_BLOCK"
        )
    return url


def shown(url: Any) -> str:
    """The URL as mlpipe prints it: the password masked."""
    return str(url.render_as_string(hide_password=True))


def parse_pairs(values: list[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not _KEY.match(key):
            raise UserError(f"{option} {value!r}: expected KEY=VALUE with KEY a plain name")
        pairs[key] = item
    return pairs


def engine_for(url: Any) -> Any:
    import sqlalchemy as sa

    try:
        return sa.create_engine(url, pool_pre_ping=False)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise UserError(f"{shown(url)}: cannot open this database ({exc})") from None


def database_error(url: Any, exc: Exception) -> DataError:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if "database is locked" in detail:
        detail += (
            " (SQLite lets no one commit while another connection reads the file, as when the "
            "input and the output are one file: write to another file, or switch the file to "
            "WAL mode: sqlite3 FILE 'PRAGMA journal_mode=WAL')"
        )
    return DataError(f"{shown(url)}: {detail}")


def quoted(engine: Any, name: str, option: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"{option} {name!r}: expected a table name such as houses or public.houses")
    quote = engine.dialect.identifier_preparer.quote_identifier  # always: keywords too
    return ".".join(quote(part) for part in name.split("."))


@dataclass
class SqlSource:
    """Rows of a table or a query, read through a server-side cursor."""

    url: Any
    table: str | None = None
    query: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise UserError(
                f"--input {shown(self.url)}: give --table NAME or --query 'SELECT ...' (one)"
            )

    def describe(self) -> str:
        return f"{shown(self.url)} ({self.table or 'query'})"

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Every row once, about ``batch_rows`` at a time. PostgreSQL (psycopg): the query's
        rows streamed by ``COPY (query) TO STDOUT`` and parsed by Arrow's CSV reader, typed by
        the query's own column types; other databases: a server-side cursor, typed by values."""
        import sqlalchemy as sa

        engine = engine_for(self.url)
        if self.table is not None:
            statement = sa.text(f"SELECT * FROM {quoted(engine, self.table, '--table')}")
        else:
            statement = sa.text(self.query or "")
        try:
            with engine.connect() as connection:
                if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
                    yield from _copy_out(connection, statement, self.params, batch_rows)
                else:
                    yield from _fetch(connection, statement, self.params, batch_rows)
        except sa.exc.SQLAlchemyError as exc:
            raise database_error(self.url, exc) from exc
        finally:
            engine.dispose()


def _fetch(
    connection: Any, statement: Any, params: dict[str, str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    # stream_results: a server-side cursor; Result.yield_per: fetch that many rows at a time
    # (the yield_per execution option alone still buffers the whole result)
    streaming = connection.execution_options(stream_results=True, max_row_buffer=batch_rows)
    result = streaming.execute(statement, params).yield_per(batch_rows)
    names = list(result.keys())
    empty = True
    for rows in result.partitions():
        empty = False
        yield pa.RecordBatch.from_arrays(
            [_column(values) for values in zip(*rows, strict=True)], names
        )
    if empty:  # no rows: the names, as numbers, so the schema check still runs
        yield pa.RecordBatch.from_arrays([pa.array([], pa.float64()) for _ in names], names)


# PostgreSQL type names (pg_type.typname) -> the Arrow type the CSV text is parsed as
_PG_TYPES = {
    "int2": pa.int64(), "int4": pa.int64(), "int8": pa.int64(), "oid": pa.int64(),
    "float4": pa.float64(), "float8": pa.float64(), "numeric": pa.float64(),
    "bool": pa.bool_(), "date": pa.date32(),
    "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
}  # fmt: skip


def _copy_out(
    connection: Any, statement: Any, params: dict[str, str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The rows of ``statement`` through COPY TO STDOUT (CSV), 8 bytes a value or so at a time
    into Arrow's streaming CSV reader: no Python object per value. The column types come from a
    ``LIMIT 0`` run of the same query; anything else is read as text."""
    import pyarrow.csv as pacsv
    from psycopg import errors

    compiled = statement.compile(dialect=connection.dialect)
    query = str(compiled)
    values = {name: params.get(name) for name in compiled.params}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise UserError(f"--query needs a value for :{missing[0]} (--param {missing[0]}=...)")
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(f"SELECT * FROM ({query}) AS mlpipe_query LIMIT 0", values)
        columns = [(c.name, c.type_code) for c in cursor.description]
        names = [name for name, _ in columns]
        typnames = dict(
            cursor.execute(
                "SELECT oid, typname FROM pg_type WHERE oid = ANY(%s)", ([o for _, o in columns],)
            )
        )
        types = {name: _PG_TYPES.get(typnames.get(oid, ""), pa.string()) for name, oid in columns}
        with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)", values) as copy:
            reader = pacsv.open_csv(
                io.BufferedReader(_CopyStream(copy), 1 << 20),
                read_options=pacsv.ReadOptions(block_size=batch_rows * 128, use_threads=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    true_values=["t"],
                    false_values=["f"],  # how COPY writes a boolean
                ),
            )
            empty = True
            for batch in reader:
                empty = False
                yield batch
            if empty:
                yield pa.RecordBatch.from_arrays([pa.array([], types[n]) for n in names], names)
    except errors.Error as exc:
        raise DataError(f"--query: {str(exc).strip().splitlines()[0]}") from exc
    except pa.ArrowInvalid as exc:
        raise DataError(f"reading the query's rows: {exc}") from exc


class _CopyStream(io.RawIOBase):
    """psycopg's COPY chunks as a readable binary stream."""

    def __init__(self, copy: Any) -> None:
        self.chunks = iter(copy)
        self.chunk = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not len(self.chunk):
            following = next(self.chunks, None)
            if following is None:
                return 0
            self.chunk = memoryview(following)
        n = min(len(buffer), len(self.chunk))
        buffer[:n] = self.chunk[:n]
        self.chunk = self.chunk[n:]
        return n


def _column(values: tuple[Any, ...]) -> pa.Array:
    """One column of a batch, typed by its values; mixed values (SQLite keeps whatever was
    stored, as 'n/a' in a REAL column) as text, which the input contract then checks per row."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
