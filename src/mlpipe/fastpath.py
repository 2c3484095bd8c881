"""The fast path: a model's ONNX graph on onnxruntime, used only where it matches the model.

``NativePredictor`` is the model's own predict; ``OnnxPredictor`` an onnxruntime session of the
graph ``onnx_export`` builds. ``choose_predictor`` takes the ONNX one only after ``check_parity``
finds it within ``PARITY_TOLERANCE`` of the native one on the input example and a held-out
sample; ``export_fast_path`` writes the graph and that sample beside a model at registration.
No MLflow here: ``predictor.py`` loads models, ``tracking.py`` logs them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlpipe.contract import InputContract
from mlpipe.onnx_export import ConversionError, to_onnx

log = logging.getLogger("mlpipe.fastpath")

# The fast path is used when max |onnx - native| <= PARITY_TOLERANCE * max |native| over the
# parity sample: 1e-4 of the prediction scale. Forests pass at 0 (the graph is exact); XGBoost
# boosters differ by float32 rounding (~1e-7 of the scale).
PARITY_TOLERANCE = 1e-4
PARITY_ROWS = 256
ONNX_FOLDER = "onnx"  # beside the model's files: onnx/model.onnx, onnx/parity_sample.json


class Predictor(Protocol):
    """Something that maps a float64 (rows, features) matrix to one prediction per row."""

    kind: str

    def predict(self, matrix: np.ndarray) -> np.ndarray: ...


class NativePredictor:
    """The model's own predict, on a DataFrame with the signature's column names."""

    kind = "native"

    def __init__(self, model: Any, columns: tuple[str, ...]) -> None:
        self.model = model
        self.columns = list(columns)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame(matrix, columns=self.columns)
        return np.asarray(self.model.predict(frame)).reshape(-1)


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

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        (output, *_) = self.session.run(
            None, {self.input_name: matrix.astype(self.dtype, copy=False)}
        )
        return np.asarray(output).reshape(-1)


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
    native: NativePredictor, contract: InputContract, path: Path, samples: np.ndarray
) -> tuple[Predictor, Parity | None, str | None]:
    """The ONNX predictor if it converts and matches ``native`` on ``samples``, else ``native``
    with the reason."""
    logged = path / ONNX_FOLDER / "model.onnx"
    try:
        graph = (
            logged.read_bytes() if logged.is_file() else to_onnx(native.model, len(contract.names))
        )
        fast = OnnxPredictor(graph)
    except ConversionError as exc:
        return native, None, f"no ONNX form: {exc}"
    except Exception as exc:  # onnxruntime refuses a graph with its own error types
        return native, None, f"onnxruntime cannot load the ONNX graph: {exc}"
    parity = check_parity(native, fast, samples, "held-out sample" if logged.is_file() else "")
    if not parity.ok:
        return (
            native,
            parity,
            (
                f"ONNX predictions differ from the native model by {parity.max_abs_diff:.3g} "
                f"(tolerance {parity.tolerance:.3g})"
            ),
        )
    return fast, parity, None


def check_parity(
    native: Predictor, fast: Predictor, samples: np.ndarray, sample_name: str = ""
) -> Parity:
    """Compare both predictors on ``samples`` row batch and row by row."""
    expected = native.predict(samples)
    got = fast.predict(samples)
    single = np.concatenate([fast.predict(samples[i : i + 1]) for i in range(min(len(samples), 8))])
    diff = max(
        float(np.max(np.abs(got - expected))),
        float(np.max(np.abs(single - expected[: len(single)]))),
    )
    scale = float(np.max(np.abs(expected))) or 1.0
    return Parity(
        rows=len(samples),
        max_abs_diff=diff,
        tolerance=PARITY_TOLERANCE * scale,
        sample=f"input example + {sample_name or 'draws around it'}",
    )


def warm_up(predictor: Predictor, rows: np.ndarray) -> None:
    for _ in range(3):
        predictor.predict(rows)


def export_fast_path(model: Any, n_features: int, held_out: Any, folder: Path) -> Path | None:
    """Write ``onnx/model.onnx`` and the held-out parity sample into ``folder`` for logging
    beside a registered model; None when the model has no ONNX form."""
    try:
        graph = to_onnx(model, n_features)
    except ConversionError as exc:
        log.warning("no ONNX fast path for %s: %s", type(model).__name__, exc)
        return None
    target = folder / ONNX_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(graph)
    sample = held_out.iloc[:PARITY_ROWS]
    (target / "parity_sample.json").write_text(
        json.dumps({"columns": list(sample.columns), "data": sample.to_numpy().tolist()})
    )
    return target
