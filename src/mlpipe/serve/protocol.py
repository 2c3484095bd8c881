"""Request bodies to a feature matrix: mlpipe's ``/predict`` and MLflow's ``/invocations``.

``/invocations`` takes what ``mlflow models serve`` takes: a JSON object with exactly one of
``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (other keys, such as
``params``, are ignored as MLflow ignores them), a CSV body with a header row, or a Parquet body.
Answers are rendered the way MLflow renders them (``json.dumps`` of ``{"predictions": [...]}``),
so the bytes match. Unlike MLflow, unknown columns are refused rather than dropped silently.

Every refusal is an ``InputError`` carrying the HTTP status: 400 unreadable body, 413 too many
rows, 415 unsupported media type, 422 readable but breaking the model's input contract.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from mlpipe.contract import InputContract, InputError, Problem

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
PARQUET_TYPE = "application/vnd.apache.parquet"
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def media_type(content_type: str | None, allowed: tuple[str, ...]) -> str:
    """The media type of a Content-Type header, if ``allowed`` and UTF-8; else a 415."""
    if not content_type:
        raise InputError.single(
            f"missing Content-Type; send one of {', '.join(allowed)}", status=415
        )
    kind, *parameters = (part.strip() for part in content_type.split(";"))
    kind = kind.lower()
    if kind not in allowed:
        raise InputError.single(
            f"unsupported Content-Type {content_type!r}; send one of {', '.join(allowed)}",
            status=415,
        )
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise InputError.single("only UTF-8 bodies are accepted (charset=utf-8)", status=415)
    return kind


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; NaN and Infinity literals parse, for the contract to name them."""
    if not body.strip():
        raise InputError.single("the body is empty; send a JSON document")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError.single(f"the body is not UTF-8 text: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise InputError.single(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InputError.single("the JSON is nested too deeply to be a table of rows") from None


def check_rows(rows: Any, max_rows: int) -> None:
    if isinstance(rows, list | dict | range) and len(rows) > max_rows:
        what = "keys" if isinstance(rows, dict) else "rows"
        raise InputError.single(
            f"the batch has {len(rows)} {what}; at most {max_rows} rows are accepted per "
            "request (--max-rows)",
            status=413,
        )


def predict_matrix(
    body: bytes, content_type: str | None, contract: InputContract, max_rows: int
) -> np.ndarray:
    """``/predict``: ``{"instances": [records]}``, a list of records, or one record."""
    media_type(content_type, (JSON_TYPE,))
    payload = decode_json(body)
    if isinstance(payload, dict) and "instances" in payload and "instances" not in contract.names:
        if len(payload) > 1:
            extra = sorted(set(payload) - {"instances"})
            raise InputError([Problem("unknown key beside 'instances'", field=extra[0])])
        records = payload["instances"]
    elif isinstance(payload, list):
        records = payload
    elif isinstance(payload, dict):
        records = [payload]
    else:
        raise InputError.single(
            'expected {"instances": [{feature: number, ...}]}, a list of records or one record',
            status=422,
        )
    check_rows(records, max_rows)
    return contract.matrix_from_records(records)


def invocations_matrix(
    body: bytes, content_type: str | None, contract: InputContract, max_rows: int
) -> np.ndarray:
    """``/invocations``: MLflow's scoring protocol."""
    kind = media_type(content_type, (JSON_TYPE, CSV_TYPE, PARQUET_TYPE))
    if kind == CSV_TYPE:
        return _csv_matrix(body, contract, max_rows)
    if kind == PARQUET_TYPE:
        return _parquet_matrix(body, contract, max_rows)
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise InputError.single(
            f"the body must be a JSON object with exactly one of {', '.join(MLFLOW_FORMATS)}"
        )
    present = [key for key in MLFLOW_FORMATS if key in payload]
    if len(present) != 1:
        raise InputError.single(
            f"the body must have exactly one of {', '.join(MLFLOW_FORMATS)}; "
            f"got keys {sorted(payload)}"
        )
    key = present[0]
    data = payload[key]
    if key == "dataframe_split":
        if not isinstance(data, dict) or "columns" not in data or "data" not in data:
            raise InputError.single(
                "dataframe_split must be an object with 'columns' and 'data' (pandas "
                "DataFrame.to_dict(orient='split'))",
                status=422,
                field=key,
            )
        check_rows(data["data"], max_rows)
        return contract.matrix_from_rows(data["columns"], data["data"])
    check_rows(data, max_rows)
    if isinstance(data, dict) and key in ("instances", "inputs"):
        return contract.matrix_from_columns(data)
    return contract.matrix_from_records(data)


def _csv_matrix(body: bytes, contract: InputContract, max_rows: int) -> np.ndarray:
    try:
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    except UnicodeDecodeError as exc:
        raise InputError.single(f"the body is not UTF-8 text: {exc.reason}") from None
    except csv.Error as exc:
        raise InputError.single(f"invalid CSV: {exc}") from None
    rows = [row for row in rows if row]
    if not rows:
        raise InputError.single("the CSV body is empty; send a header row and data rows")
    header, data = rows[0], rows[1:]
    check_rows(data, max_rows)
    kinds = dict(zip(contract.names, contract.types, strict=True))
    cells = [
        _CSV_CELLS.get(_csv_kind(contract, kinds.get(name), name), _csv_value) for name in header
    ]
    return contract.matrix_from_rows(
        header, [[read(cell) for read, cell in zip(cells, row, strict=False)] for row in data]
    )


def _csv_kind(contract: InputContract, kind: str | None, name: str) -> str:
    # a category is its text as written ("007" stays "007"); an integer code is a number
    return "text" if name in contract.categories and kind == "string" else kind or ""


def _csv_value(cell: str) -> Any:
    if not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


_BOOLEAN_WORDS = {"true": True, "false": False, "1": True, "0": False}
_CSV_CELLS = {
    "text": lambda cell: cell if cell.strip() else None,
    "boolean": lambda cell: (
        _BOOLEAN_WORDS.get(cell.strip().lower(), cell) if cell.strip() else None
    ),
}


def _parquet_matrix(body: bytes, contract: InputContract, max_rows: int) -> np.ndarray:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:  # the serving image leaves pyarrow (~150 MB) out
        raise InputError.single(
            f"this server reads no Parquet (pyarrow is not installed); send {JSON_TYPE} or "
            f"{CSV_TYPE}",
            status=415,
        ) from None

    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowException, OSError) as exc:
        raise InputError.single(f"invalid Parquet body: {exc}") from None
    columns = table.to_pydict()
    check_rows(range(table.num_rows), max_rows)
    return contract.matrix_from_columns({k: list(v) for k, v in columns.items()})


def render_predictions(predictions: np.ndarray) -> bytes:
    """MLflow's answer bytes: ``json.dumps({"predictions": [...]})``."""
    return json.dumps({"predictions": predictions.tolist()}).encode()
