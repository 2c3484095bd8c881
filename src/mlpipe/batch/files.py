"""Reading input tables in batches and writing Parquet atomically, for batch scoring.

- ``FileSet`` and ``Source``: a CSV or Parquet file, or a folder of one of them, read file by
  file in record batches (Parquet page by page, not whole row groups), so memory stays a few
  batches whatever the input size. CSV feature columns are read as text and converted per batch,
  so one bad value rejects its row instead of failing the read. A file set's ``fetch`` gives each
  file as a local path: the file itself here, a downloaded copy for objects (``objects.py``).
- ``feature_values``: a batch's feature columns as float64, with what the reader saw where a value
  is missing or not a number (the contract's ``check_columns`` turns that into reasons).
- ``AtomicParquet``: Parquet written to a ``Destination`` that makes it appear whole or not at
  all: ``LocalFile`` writes under a hidden temporary name and renames it into place (readers of a
  folder, pyarrow, Spark or DuckDB, skip hidden files); ``multipart.S3Object`` completes a
  multipart upload.

No MLflow, no Prefect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlpipe.contract import ColumnValues, InputContract, InputError
from mlpipe.data import FILE_SUFFIXES
from mlpipe.errors import DataError
from mlpipe.processes import alive

TMP_MARK = ".tmp-"


def input_files(path: Path) -> tuple[list[Path], str]:
    """The data files of ``path`` (a file, or a folder searched recursively) and their format."""
    if not path.exists():
        raise DataError(f"--input {path}: no such file or folder")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and is_data_file(p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"--input {path}: the folder has no .csv or .parquet files")
    return files, one_format(str(path), [p.suffix for p in files], "folder", "file")


def is_data_file(relative: Sequence[str]) -> bool:
    """Whether a path under a folder (its parts) is a data file to read: a .csv or .parquet
    name, and no part hidden or ``_``-prefixed (Spark's _SUCCESS, a writer's .tmp files)."""
    return PurePosixPath(relative[-1]).suffix.lower() in FILE_SUFFIXES and not any(
        part.startswith((".", "_")) for part in relative
    )


def one_format(location: str, suffixes: Iterable[str], folder: str, kind: str) -> str:
    """The one format (csv, parquet) of files with these suffixes, or a ``DataError``."""
    formats = {FILE_SUFFIXES.get(suffix.lower()) for suffix in suffixes}
    if None in formats:
        raise DataError(f"--input {location}: expected a .csv or .parquet {kind}")
    if len(formats) > 1:
        raise DataError(
            f"--input {location}: the {folder} mixes CSV and Parquet {kind}s; use one format"
        )
    return formats.pop()  # type: ignore[return-value]


def local_copies(files: Iterable[Any]) -> Iterator[tuple[Any, Path]]:
    """A local file is its own local copy."""
    return ((f, Path(f)) for f in files)


@dataclass(frozen=True)
class FileSet:
    """Data files of one format, where they were asked for, and how to get each as a local file
    (``fetch``: in order, each valid until the next is asked for)."""

    location: str
    files: list[Any]  # Path, or objects.S3Url
    format: str
    fetch: Callable[[Sequence[Any]], Iterator[tuple[Any, Path]]] = field(default=local_copies)
    local: bool = True  # whether every file's schema can be read before the first batch

    @classmethod
    def at(cls, path: Path) -> FileSet:
        files, fmt = input_files(path)
        return cls(str(path), files, fmt)


@dataclass(frozen=True)
class Source:
    """The input files, their format, and the columns to read from each."""

    files: list[Any]
    format: str
    columns: list[str]
    text_columns: tuple[str, ...]  # CSV features are read as text, converted per batch
    fetch: Callable[[Sequence[Any]], Iterator[tuple[Any, Path]]] = field(default=local_copies)

    def schema(self, path: Path, name: object = None) -> pa.Schema:
        """The columns ``path`` has (Parquet: its footer; CSV: its header and first block)."""
        try:
            if self.format == "parquet":
                return pq.read_schema(path)
            with self._open_csv(path, columns=None) as reader:
                return reader.schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read {name or path}: {exc}") from exc

    def batches(
        self, batch_rows: int, check: Callable[[pa.Schema, str], object] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Every file's rows in order, one batch at a time. Parquet is read page by page
        (no pre-buffering of whole row groups), so memory stays a few batches. ``check`` sees
        each file's schema before its rows (for files whose schema was not read ahead)."""
        for name, path in self.fetch(self.files):
            if check is not None:
                check(self.schema(path, name), str(name))
            try:
                if self.format == "parquet":
                    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
                    yield from parquet.iter_batches(batch_size=batch_rows, columns=self.columns)
                else:
                    with self._open_csv(path, self.columns) as reader:
                        yield from reader
            except pa.ArrowInvalid as exc:
                raise DataError(f"cannot read {name}: {exc}") from exc

    def _open_csv(self, path: Path, columns: list[str] | None) -> Any:
        import pyarrow.csv as pacsv

        return pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=4 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in self.text_columns},
                # only an empty field is missing: "NaN", "NA" or "null" stay text, so a
                # rejected row names what was there (Arrow's default list reads them as null)
                null_values=[""],
                strings_can_be_null=True,
                include_columns=columns,
            ),
        )


def check_schema(source: Source, contract: InputContract, id_columns: Sequence[str]) -> pa.Schema:
    """Every file must have every feature and id column, features of a numeric or text type.
    Returns the first file's schema (the output takes its id columns' types)."""
    schemas = [check_columns(source.schema(p), str(p), contract, id_columns) for p in source.files]
    return schemas[0]


def check_columns(
    schema: pa.Schema, where: str, contract: InputContract, id_columns: Sequence[str]
) -> pa.Schema:
    """One input's columns: every feature and id column there, features numbers or text."""
    try:
        contract.require_columns(schema.names)
    except InputError as exc:
        raise InputError.single(f"{where}: {exc}", status=422) from None
    missing_ids = [c for c in id_columns if c not in schema.names]
    if missing_ids:
        raise DataError(
            f"{where}: no id column(s) {', '.join(missing_ids)}; it has {', '.join(schema.names)}"
        )
    for name, declared in zip(contract.names, contract.types, strict=True):
        kind = schema.field(name).type
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        boolean = pa.types.is_boolean(kind) and declared == "boolean"
        if not (_is_number(kind) or text or boolean or pa.types.is_null(kind)):  # null: all missing
            raise DataError(f"{where}: column {name!r} has type {kind}; the model takes numbers")
    return schema


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def feature_values(batch: pa.RecordBatch, contract: InputContract) -> ColumnValues:
    """The batch's feature columns as float64 arrays, with their nulls and, where text did not
    parse as a number, the text itself."""
    values, nulls, texts = [], [], []
    kinds = dict(zip(contract.names, contract.types, strict=True))
    for name in contract.names:
        column = batch.column(name)
        null_mask = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        text = None
        if name in contract.categories and kinds[name] == "string" and _is_text(column.type):
            array = _category_codes(column, contract.categories[name])
        elif name in contract.categories:  # integer codes: "3" and "3.0" in a CSV are 3
            numbers, text = _numbers(column)
            array = contract.codes(name, numbers)
        elif kinds[name] == "boolean" and not pa.types.is_boolean(column.type):
            array, text = _booleans(column)
        else:
            array, text = _numbers(column)
        values.append(array)
        nulls.append(null_mask)
        texts.append(text)
    return ColumnValues(values, nulls, texts)


def _numbers(column: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as float64 (NaN where null or not a number), with its text where some value
    is no finite number (so a rejection can quote it)."""
    if _is_number(column.type) or pa.types.is_boolean(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False), None
    try:
        array = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        unparsed = False
    except pa.ArrowInvalid:  # some value is not a number: parse one by one, NaN for those
        import pandas as pd

        strings = pd.Series(column.to_numpy(zero_copy_only=False))
        array = pd.to_numeric(strings, errors="coerce").to_numpy(np.float64)
        unparsed = True
    if unparsed or not np.isfinite(array).all():
        return array, column.to_numpy(zero_copy_only=False)
    return array, None


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _category_codes(column: pa.Array, categories: Sequence[str]) -> np.ndarray:
    """A text column's categories as the contract codes them (``InputContract.codes``), in
    Arrow's own lookup: the position in ``categories``, one more for an unseen one, NaN for a
    missing or empty one."""
    found = pc.index_in(column, value_set=pa.array(list(categories), pa.string()))
    codes = np.array(
        found.cast(pa.float64()).fill_null(len(categories)).to_numpy(zero_copy_only=False)
    )
    missing = pc.fill_null(pc.or_(column.is_null(), pc.equal(column, "")), True)
    codes[missing.to_numpy(zero_copy_only=False)] = np.nan
    return codes


def _booleans(column: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """A boolean feature read as text (CSV): true/false or 1/0 as 1/0, blank as missing; NaN
    and the text itself for anything else (so a rejection can quote it)."""
    words = pc.utf8_lower(pc.utf8_trim_whitespace(column.cast(pa.string())))
    truth = {"true": 1.0, "1": 1.0, "false": 0.0, "0": 0.0}
    seen = words.to_numpy(zero_copy_only=False)
    array = np.array([truth.get(w, np.nan) if isinstance(w, str) else np.nan for w in seen])
    odd = [isinstance(w, str) and w not in truth and w != "" for w in seen]
    return array, column.to_numpy(zero_copy_only=False) if any(odd) else None


def clear_stale_temporaries(output: Path) -> None:
    """Remove temporary files a killed earlier run of this output left behind."""
    for stale in output.parent.glob(f".{output.name}{TMP_MARK}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and int(pid) != os.getpid() and alive(int(pid))):
            stale.unlink(missing_ok=True)


class Destination(Protocol):
    """Where one output file goes, so that it appears whole or not at all."""

    def prepare(self) -> None: ...  # before writing: clear what a killed earlier run left

    def open(self) -> Any: ...  # a path or a writable file for the Parquet writer

    def commit(self) -> None: ...  # make what was written appear, replacing an earlier one

    def discard(self) -> None: ...  # drop what was written

    def remove(self) -> None: ...  # remove an earlier output at the target


class LocalFile:
    """A file written under a hidden temporary name and renamed into place on commit."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")

    def __str__(self) -> str:
        return str(self.target)

    def prepare(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_temporaries(self.target)

    def open(self) -> Path:
        return self.tmp

    def commit(self) -> None:
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        self.target.unlink(missing_ok=True)


class AtomicParquet:
    """A Parquet file written to a ``Destination``, appearing there on commit."""

    def __init__(self, destination: Destination, schema: pa.Schema) -> None:
        self.destination = destination
        self.schema = schema
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.destination.open(), self.schema, compression="zstd")
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, keep_empty: bool = True) -> bool:
        """Make it appear; with ``keep_empty`` False, an empty file is not kept (and an
        earlier one at the target is removed). True when the target now exists."""
        if self.writer is None and keep_empty:
            self.write(self.schema.empty_table())
        if self.writer is not None:
            self.writer.close()
        if self.rows == 0 and not keep_empty:
            self.destination.discard()
            self.destination.remove()
            return False
        self.destination.commit()
        return True

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):  # already failing: keep the first error
                self.writer.close()
        self.destination.discard()


def as_type(column: pa.Array, kind: pa.DataType) -> pa.Array:
    """An id column in the first file's type (files of one input may infer it differently)."""
    if column.type == kind:
        return column
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"id column {column.type} cannot be read as {kind}: {exc}") from exc


def count_rows(source: Path) -> int:
    """Rows in ``source``, for a progress bar's total: Parquet's from the footers (exact); a
    CSV's from its line breaks less the header (one read at disk speed, in 1 MiB pieces; a
    quoted field holding a line break counts it twice)."""
    files, fmt = input_files(source)
    if fmt == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    total = 0
    for path in files:
        with path.open("rb") as handle:
            breaks, last = 0, b"\n"
            while chunk := handle.read(1 << 20):
                breaks, last = breaks + chunk.count(b"\n"), chunk[-1:]
        total += max(breaks + (last != b"\n") - 1, 0)  # a last line without its break counts
    return total
