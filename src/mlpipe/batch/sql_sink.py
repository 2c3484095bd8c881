"""A database table as a batch sink: one partition's predictions and rejects, written in one
transaction (see ``sql.py`` for where URLs come from and how a partition is replaced).

No Prefect, no MLflow.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from mlpipe.batch.sql import database_error, engine_for, quoted, shown
from mlpipe.errors import DataError, UserError

_SQL_TYPES: list[tuple[Callable[[pa.DataType], bool], str]] = [
    (pa.types.is_boolean, "Boolean"),
    (pa.types.is_integer, "BigInteger"),
    (pa.types.is_floating, "Double"),
    (pa.types.is_decimal, "Numeric"),
    (pa.types.is_timestamp, "DateTime"),
    (pa.types.is_date, "Date"),
]


def _column_type(kind: pa.DataType) -> Any:
    import sqlalchemy as sa

    for test, name in _SQL_TYPES:
        if test(kind):
            if name == "DateTime":
                return sa.DateTime(timezone=kind.tz is not None)
            return getattr(sa, name)()
    return sa.Text()


class SqlSink:
    """The predictions and rejects of one partition, written in one transaction."""

    def __init__(
        self,
        url: Any,
        table: str,
        partition: tuple[str, str] | None,
        predictions: pa.Schema,
        rejects: pa.Schema,
    ) -> None:
        import sqlalchemy as sa

        self.url = url
        self.engine = engine_for(url)
        quoted(self.engine, table, "--output-table")
        if partition is not None and partition[0] in predictions.names:
            raise UserError(f"--partition {partition[0]}: that name is an output column already")
        self.partition = partition
        self.scored = 0
        self.rejected = 0
        self.connection = self.engine.connect()
        self.transaction = self.connection.begin()
        schema, _, name = table.rpartition(".")
        self.metadata = sa.MetaData(schema=schema or None)
        try:
            self._lock(table)
            self.predictions, _ = self._prepare(name, predictions, create=True)
            self.rejects, self.rejects_exist = self._prepare(
                f"{name}_rejects", rejects, create=False
            )
        except sa.exc.SQLAlchemyError as exc:
            self.discard()
            raise database_error(url, exc) from exc
        except BaseException:
            self.discard()
            raise

    def describe(self, table: Any = None) -> str:
        where = f" where {self.partition[0]} = {self.partition[1]!r}" if self.partition else ""
        name = (self.predictions if table is None else table).fullname
        return f"{shown(self.url)} table {name}{where}"

    def _lock(self, table: str) -> None:
        """One writer per partition at a time, so two runs cannot both insert."""
        import sqlalchemy as sa

        if self.engine.dialect.name == "postgresql":
            key = zlib.crc32(f"{table}|{self.partition}".encode())
            self.connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def _columns(self, schema: pa.Schema) -> list[Any]:
        import sqlalchemy as sa

        columns = [sa.Column(f.name, _column_type(f.type)) for f in schema]
        if self.partition is not None:
            columns.insert(0, sa.Column(self.partition[0], sa.Text(), index=True))
        return columns

    def _prepare(self, name: str, schema: pa.Schema, create: bool) -> tuple[Any, bool]:
        """The table object and whether it exists now; created when missing (if ``create``),
        this partition's old rows deleted when it exists."""
        import sqlalchemy as sa

        table = sa.Table(name, self.metadata, *self._columns(schema))
        exists = sa.inspect(self.connection).has_table(name, schema=self.metadata.schema)
        if not exists:
            if create:
                table.create(self.connection)
            return table, create
        delete = table.delete()
        if self.partition is not None:
            delete = delete.where(table.c[self.partition[0]] == self.partition[1])
        self.connection.execute(delete)
        return table, True

    def write_predictions(self, rows: pa.Table) -> None:
        self._insert(self.predictions, rows)
        self.scored += rows.num_rows

    def write_rejects(self, rows: pa.Table) -> None:
        if not self.rejects_exist:
            self.rejects.create(self.connection)
            self.rejects_exist = True
        self._insert(self.rejects, rows)
        self.rejected += rows.num_rows

    def _insert(self, table: Any, rows: pa.Table) -> None:
        import sqlalchemy as sa

        if self.partition is not None:
            rows = rows.add_column(
                0, self.partition[0], pa.repeat(pa.scalar(self.partition[1]), rows.num_rows)
            )
        try:
            if self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg":
                self._copy(table, rows)
            else:
                self.connection.execute(table.insert(), rows.to_pylist())
        except sa.exc.SQLAlchemyError as exc:
            raise database_error(self.url, exc) from exc

    def _copy(self, table: Any, rows: pa.Table) -> None:
        """PostgreSQL's bulk path: the batch as CSV (written by Arrow) into COPY FROM STDIN."""
        import pyarrow.csv as pacsv
        from psycopg import errors, sql

        buffer = io.BytesIO()
        pacsv.write_csv(rows, buffer, pacsv.WriteOptions(include_header=False))
        target = sql.Identifier(*([table.schema] if table.schema else []), table.name)
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            target, sql.SQL(", ").join(sql.Identifier(n) for n in rows.column_names)
        )
        cursor = self.connection.connection.driver_connection.cursor()
        try:
            with cursor.copy(statement) as copy:
                copy.write(buffer.getbuffer())
        except errors.Error as exc:
            raise DataError(f"{self.describe(table)}: {str(exc).strip().splitlines()[0]}") from exc

    def commit(self) -> bool:
        """Make the partition's rows visible at once; True when there were rejects."""
        self.transaction.commit()
        self.connection.close()
        self.engine.dispose()
        return self.rejected > 0

    def discard(self) -> None:
        """Roll back: the tables stay as they were before this run."""
        try:
            if self.transaction.is_active:
                self.transaction.rollback()
        finally:
            self.connection.close()
            self.engine.dispose()
