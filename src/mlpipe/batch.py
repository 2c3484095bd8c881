"""Batch scoring: a CSV or Parquet file (or a folder of them) in, a Parquet file of predictions out.

The input is read in record batches (``tables.Source``), each batch is checked against the
model's input contract (the same rules as the online API), predicted with the fast predictor on
a few threads and appended to the output, so memory stays bounded by a few batches whatever the
input size.

- Missing feature columns stop the run before anything is written; rows with bad values go to a
  rejects file with their id and the reason, up to ``max_rejects``.
- The output appears whole or not at all (``tables.AtomicParquet``); a rerun replaces it, never
  appends, so scoring the same input twice gives the same rows.

No Prefect and no MLflow here: the caller passes a loaded model (``predictor.LoadedModel``).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlpipe.contract import InputContract
from mlpipe.errors import UserError
from mlpipe.tables import (
    AtomicParquet,
    Source,
    as_type,
    check_schema,
    clear_stale_temporaries,
    feature_values,
    input_files,
)


class ScoringModel(Protocol):
    """What scoring needs of a model (``predictor.LoadedModel`` is one)."""

    @property
    def ref(self) -> Any: ...  # .uri, .name

    @property
    def version(self) -> str | None: ...

    @property
    def contract(self) -> InputContract: ...

    @property
    def predictor(self) -> Any: ...  # .kind

    def predict(self, matrix: np.ndarray) -> np.ndarray: ...


BATCH_ROWS = 32_768  # measured on 5M rows: faster and ~80 MB lighter than 131,072
ROW_COLUMN = "row"  # the id column when the caller names none: the row's position in the input


class RejectLimitError(UserError):
    """More rows were rejected than the caller allowed; nothing was written."""


@dataclass(frozen=True)
class ScoreSummary:
    """What one scoring run did (what the CLI prints and the flow returns)."""

    input: str
    output: str
    rejects: str | None
    rows: int
    scored: int
    rejected: int
    seconds: float
    model_name: str | None
    model_version: str | None
    predictor: str
    files: int
    first_rejects: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "rejects": self.rejects,
            "rows": self.rows,
            "scored": self.scored,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "predictor": self.predictor,
            "files": self.files,
        }


def rejects_path_for(output: Path) -> Path:
    """Where the rejected rows of ``output`` go: ``NAME.rejects.parquet`` beside it."""
    return output.with_name(f"{output.stem}.rejects.parquet")


def score(
    model: ScoringModel,
    source: Path,
    output: Path,
    id_columns: Sequence[str] = (),
    max_rejects: int | None = 1000,
    batch_rows: int = BATCH_ROWS,
    on_progress: Callable[[int], None] | None = None,
    rejects: Path | None = None,
    workers: int | None = None,
) -> ScoreSummary:
    """Score every row of ``source`` into ``output`` (Parquet); see the module docstring."""
    started = time.perf_counter()
    contract = model.contract
    clash = {*id_columns} & {"prediction", "model_name", "model_version", "scored_at"}
    if clash:
        raise UserError(f"--id-column {', '.join(sorted(clash))}: that name is an output column")
    files, fmt = input_files(source)
    ids = list(id_columns)
    reader = Source(files, fmt, [*ids, *contract.names], contract.names if fmt == "csv" else ())
    schema = check_schema(reader, contract, ids)
    output.parent.mkdir(parents=True, exist_ok=True)
    rejects = rejects or rejects_path_for(output)
    clear_stale_temporaries(output)
    clear_stale_temporaries(rejects)

    id_fields = [schema.field(c) for c in ids] or [pa.field(ROW_COLUMN, pa.int64())]
    name, version = model.ref.name, model.version
    scored_at = datetime.now(UTC)
    meta = {"mlpipe": json.dumps({"model": model.ref.uri, "model_version": version})}
    predictions = AtomicParquet(
        output,
        pa.schema(
            [
                *id_fields,
                pa.field("prediction", pa.float64()),
                pa.field("model_name", pa.string()),
                pa.field("model_version", pa.string()),
                pa.field("scored_at", pa.timestamp("us", tz="UTC")),
            ],
            metadata=meta,
        ),
    )
    rejected = AtomicParquet(rejects, pa.schema([*id_fields, pa.field("reason", pa.string())]))
    constants = [
        pa.scalar(name, pa.string()),
        pa.scalar(version, pa.string()),
        pa.scalar(scored_at, pa.timestamp("us", tz="UTC")),
    ]

    def write(ids_of_rows: list[pa.Array], predicted: np.ndarray) -> None:
        n = len(predicted)
        columns = [*ids_of_rows, pa.array(predicted.astype(np.float64, copy=False))]
        columns += [pa.repeat(value, n) for value in constants]
        predictions.write(pa.Table.from_arrays(columns, schema=predictions.schema))

    rows = 0
    first_rejects: list[str] = []
    # Batches are predicted on `workers` threads (onnxruntime and scikit-learn release the GIL)
    # while this thread reads and checks the next ones; results are written in input order.
    pending: deque[tuple[list[pa.Array], Future[np.ndarray]]] = deque()
    workers = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mlpipe-score")
    try:
        for batch in reader.batches(batch_rows):
            id_arrays = (
                [as_type(batch.column(c), f.type) for c, f in zip(ids, id_fields, strict=True)]
                if ids
                else [pa.array(np.arange(rows, rows + batch.num_rows, dtype=np.int64))]
            )
            matrix, valid, reasons = contract.check_columns(feature_values(batch, contract))
            if reasons:
                mask = pa.array(valid)
                bad_ids = [pc.filter(a, pc.invert(mask)) for a in id_arrays]
                rejected.write(
                    pa.Table.from_arrays([*bad_ids, pa.array(reasons)], schema=rejected.schema)
                )
                first_rejects.extend(
                    f"{bad_ids[0][k].as_py()}: {r}" for k, r in enumerate(reasons[:5])
                )
                if max_rejects is not None and rejected.rows > max_rejects:
                    raise RejectLimitError(
                        f"{rejected.rows} rows rejected, more than --max-rejects {max_rejects}; "
                        f"nothing was written. First: {'; '.join(first_rejects[:3])}"
                    )
                id_arrays = [pc.filter(a, mask) for a in id_arrays]
                matrix = matrix[valid]
            if len(matrix):
                pending.append((id_arrays, pool.submit(model.predict, matrix)))
            while len(pending) > workers:
                done_ids, future = pending.popleft()
                write(done_ids, future.result())
            rows += batch.num_rows
            if on_progress is not None:
                on_progress(batch.num_rows)
        while pending:
            done_ids, future = pending.popleft()
            write(done_ids, future.result())
        # rejects first: when the predictions appear, their rejects are already beside them
        has_rejects = rejected.commit(keep_empty=False)
        predictions.commit()
    except BaseException:
        for _, future in pending:
            future.cancel()
        predictions.discard()
        rejected.discard()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return ScoreSummary(
        input=str(source),
        output=str(output),
        rejects=str(rejects) if has_rejects else None,
        rows=rows,
        scored=predictions.rows,
        rejected=rejected.rows,
        seconds=time.perf_counter() - started,
        model_name=name,
        model_version=version,
        predictor=model.predictor.kind,
        files=len(files),
        first_rejects=first_rejects[:5],
    )
