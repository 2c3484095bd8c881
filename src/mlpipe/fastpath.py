"""The fast path: a model's ONNX graph on onnxruntime, used only where it matches the model.

``NativePredictor`` is the model's own predict; ``OnnxPredictor`` an onnxruntime session of the
graph ``onnx_export`` builds. ``choose_predictor`` takes the ONNX one only after ``check_parity``
finds it within ``PARITY_TOLERANCE`` of the native predictions on a held-out sample;
``export_fast_path`` writes the graph, that sample and the native model's predictions on it
beside a model at registration. With those recorded, a process that serves the graph never
loads the native model (for scikit-learn, skops imports every estimator module: 2.5 s of a
6 s `mlpipe score` here); ``NativePredictor`` loads it on first use.
No MLflow here: ``predictor.py`` loads models, ``tracking.py`` logs them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlpipe.contract import InputContract
from mlpipe.onnx_export import ConversionError, to_onnx

log = logging.getLogger("mlpipe.fastpath")

# The fast path is used when max |onnx - native| <= PARITY_TOLERANCE * max |native| over the
# parity sample: 1e-4 of the prediction scale. Forests pass at 0 (the graph is exact); XGBoost
# and LightGBM differ by float32 rounding (~1e-7 of the scale, or of a probability).
PARITY_TOLERANCE = 1e-4
PARITY_ROWS = 256
ONNX_FOLDER = "onnx"  # beside the model's files: onnx/model.onnx, onnx/parity_sample.json
PARITY_FILE = "parity_sample.json"
ENCODING_FILE = "encoding.json"  # a one-hot pipeline's column step, as tables


class Predictor(Protocol):
    """Something that maps a float64 (rows, features) matrix to one prediction per row, and to
    its scores: a regressor's predictions, a classifier's probabilities (rows, classes). The
    fast path must match the native model's scores."""

    kind: str

    def predict(self, matrix: np.ndarray) -> np.ndarray: ...

    def scores(self, matrix: np.ndarray) -> np.ndarray: ...


class NativePredictor:
    """The model's own predict, on a DataFrame with the signature's column names. Built with
    ``deferred``, the model is loaded on first use (once, whichever thread asks first)."""

    kind = "native"

    def __init__(self, model: Any, contract: InputContract) -> None:
        self._model = model
        self._load: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        self.contract = contract

    @classmethod
    def deferred(cls, load: Callable[[], Any], contract: InputContract) -> NativePredictor:
        native = cls(None, contract)
        native._load = load
        return native

    @property
    def loaded(self) -> bool:
        return self._load is None

    @property
    def model(self) -> Any:
        if self._load is not None:
            with self._lock:
                if self._load is not None:
                    self._model = self._load()
                    self._load = None
        return self._model

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(self._frame(matrix))).reshape(-1)

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """A classifier's probabilities (one column per class, in its ``classes_`` order), or
        a regressor's predictions."""
        if not hasattr(self.model, "predict_proba"):
            return self.predict(matrix)
        return np.asarray(self.model.predict_proba(self._frame(matrix)))

    def _frame(self, matrix: np.ndarray) -> Any:
        # categories back from their codes: the model's pipeline takes the table
        return self.contract.frame(matrix)


class OnnxPredictor:
    """An onnxruntime session: one thread, no spinning, so each request costs microseconds
    and a second worker process gets the other core. One thread also keeps the forest's sum in
    tree order (bit-for-bit); batch scoring runs several batches at once instead. ``run`` is
    thread-safe."""

    kind = "onnx"

    def __init__(self, graph: bytes) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"]
        )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.dtype = np.float32 if model_input.type == "tensor(float)" else np.float64
        # onnxmltools' classifiers output label and probabilities: the scores are the latter
        names = [output.name for output in self.session.get_outputs()]
        self.outputs = ["probabilities" if "probabilities" in names else names[0]]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """The graph's output: one value a row, or a classifier's probabilities (rows,
        classes)."""
        (output,) = self.session.run(
            self.outputs, {self.input_name: matrix.astype(self.dtype, copy=False)}
        )
        output = np.asarray(output).reshape(len(matrix), -1)
        return output.reshape(-1) if output.shape[1] == 1 else output

    scores = predict


class EncodedOnnxPredictor:
    """A one-hot pipeline's fast path: the input contract's category codes turned into the
    column step's output by table lookup (``columns.encoding_tables``, written at
    registration), then the estimator's ONNX graph. No scikit-learn at serving time."""

    kind = "onnx"

    def __init__(self, graph: bytes, encoding: dict[str, Any], contract: InputContract) -> None:
        self.graph = OnnxPredictor(graph)
        position = {name: j for j, name in enumerate(contract.names)}
        self.tables = [
            (position[name], np.asarray(table, dtype=np.float64))
            for name, table in encoding["categorical"].items()
        ]
        self.numeric = np.asarray([position[n] for n in encoding["numeric"]], dtype=np.intp)
        self.width = sum(t.shape[1] for _, t in self.tables) + len(self.numeric)

    def encode(self, matrix: np.ndarray) -> np.ndarray:
        out = np.empty((len(matrix), self.width), dtype=np.float64)
        offset = 0
        for j, table in self.tables:  # rows: the categories, an unseen one, a missing one
            codes = matrix[:, j]
            index = np.where(np.isnan(codes), len(table) - 1, codes).astype(np.intp)
            out[:, offset : offset + table.shape[1]] = table[index]
            offset += table.shape[1]
        out[:, offset:] = matrix[:, self.numeric]
        return out

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.graph.predict(self.encode(matrix))

    scores = predict


@dataclass(frozen=True)
class Parity:
    """How closely the fast path matched the native model."""

    rows: int
    max_abs_diff: float
    tolerance: float
    sample: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "relative_tolerance": PARITY_TOLERANCE,
            "sample": self.sample,
        }


def choose_predictor(
    native: NativePredictor,
    contract: InputContract,
    path: Path,
    samples: np.ndarray,
    recorded: np.ndarray | None = None,
) -> tuple[Predictor, Parity | None, str | None]:
    """The ONNX predictor if it converts and matches the native predictions on ``samples``
    (``recorded`` at registration, else ``native``'s now), else ``native`` with the reason."""
    logged = path / ONNX_FOLDER / "model.onnx"
    encoding = path / ONNX_FOLDER / ENCODING_FILE
    try:
        graph = (
            logged.read_bytes() if logged.is_file() else to_onnx(native.model, len(contract.names))
        )
        fast: Predictor = (
            EncodedOnnxPredictor(graph, json.loads(encoding.read_text()), contract)
            if encoding.is_file()
            else OnnxPredictor(graph)
        )
    except ConversionError as exc:
        return native, None, f"no ONNX form: {exc}"
    except Exception as exc:  # onnxruntime refuses a graph with its own error types
        return native, None, f"onnxruntime cannot load the ONNX graph: {exc}"
    if recorded is not None:
        expected, sample = recorded, "held-out sample, native predictions recorded at registration"
    else:
        held_out = "held-out sample" if logged.is_file() else "draws around it"
        expected, sample = native.scores(samples), f"input example + {held_out}"
    parity = check_parity(expected, fast, samples, sample)
    if not parity.ok:
        return (
            native,
            parity,
            (
                f"ONNX predictions differ from the native model by {parity.max_abs_diff:.3g} "
                f"(tolerance {parity.tolerance:.3g}; {sample})"
            ),
        )
    return fast, parity, None


def check_parity(expected: np.ndarray, fast: Predictor, samples: np.ndarray, sample: str) -> Parity:
    """Compare ``fast`` with the native predictions ``expected`` on ``samples``, in one batch
    and row by row."""
    got = fast.scores(samples)
    single = np.concatenate([fast.scores(samples[i : i + 1]) for i in range(min(len(samples), 8))])
    diff = max(
        float(np.max(np.abs(got - expected))),
        float(np.max(np.abs(single - expected[: len(single)]))),
    )
    scale = float(np.max(np.abs(expected))) or 1.0
    return Parity(
        rows=len(samples),
        max_abs_diff=diff,
        tolerance=PARITY_TOLERANCE * scale,
        sample=sample,
    )


def warm_up(predictor: Predictor, rows: np.ndarray) -> None:
    for _ in range(3):
        predictor.predict(rows)


def export_fast_path(
    model: Any,
    n_features: int,
    held_out: Any,
    folder: Path,
    model_id: str | None = None,
    categories: dict[str, list[str]] | None = None,
) -> Path | None:
    """Write ``onnx/model.onnx`` and the held-out parity sample, with the model's predictions
    on it and the logged model's ``model_id`` they belong to, into ``folder`` for logging beside
    a registered model; None when the model has no ONNX form. A pipeline of a table with
    ``categories`` (``held_out`` in the types as loaded) gets its column step as tables."""
    encoding = None
    estimator = model
    if categories is not None:
        from mlpipe.encodings import encoding_tables

        encoding = encoding_tables(model, categories)
        if encoding is None:
            log.info("no ONNX fast path: native categorical splits have no exact converter")
            return None
        estimator = model.named_steps["model"]
        n_features = len(model.named_steps["encode"].get_feature_names_out())
    try:
        graph = to_onnx(estimator, n_features)
    except ConversionError as exc:
        log.warning("no ONNX fast path for %s: %s", type(model).__name__, exc)
        return None
    target = folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(graph)
    sample = held_out.iloc[:PARITY_ROWS]
    if encoding is None:
        # predicted as a reader predicts: float64 rows in a frame with the signature's names
        matrix = sample.to_numpy(dtype=np.float64)
        numbers = InputContract(tuple(sample.columns), ("double",) * len(sample.columns))
        predictions = NativePredictor(model, numbers).scores(matrix)
        data: list[Any] = matrix.tolist()
    else:  # the rows as a client sends them (strings, booleans, null), the table as loaded
        (target / ENCODING_FILE).write_text(json.dumps(encoding))
        predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
        predictions = np.asarray(predict(sample))
        data = [[_plain(v) for v in row] for row in sample.astype(object).to_numpy().tolist()]
    record: dict[str, Any] = {"columns": list(sample.columns), "data": data}
    record |= {"predictions": predictions.tolist(), "model_id": model_id}
    (target / PARITY_FILE).write_text(json.dumps(record))
    return target


def _plain(value: Any) -> Any:
    """A table cell as JSON holds it: None where missing, Python scalars."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "<NA>":
        return None
    return value.item() if isinstance(value, np.generic) else value


def recorded_parity(
    folder: Path, contract: InputContract, model_id: str | None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The held-out rows logged beside a model (None: no such file), with the native
    predictions recorded for them when they were recorded for this very logged model
    (``model_id``, from its MLmodel file), else None in their place."""
    file = folder / ONNX_FOLDER / PARITY_FILE
    if not file.is_file():
        return None
    payload = json.loads(file.read_text())
    rows = contract.matrix_from_rows(payload["columns"], payload["data"])
    predictions = payload.get("predictions")
    if predictions is None or model_id is None or payload.get("model_id") != model_id:
        return rows, None
    return rows, np.asarray(predictions, dtype=np.float64)
