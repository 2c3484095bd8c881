"""Load a logged or registered model and pick its predictor: the ONNX fast path or the native one.

A model comes from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local model folder
(one with an ``MLmodel`` file). Loading resolves the URI to one exact version, downloads it,
loads the native model (scikit-learn through skops with the types listed in its MLmodel, XGBoost
in its own format; pickles only when the caller allows them), reads the signature into an
``InputContract`` and builds the ONNX predictor: from ``onnx/model.onnx`` logged beside the model
at registration, else converted now. The ONNX predictor is used only after it matches the native
model's predictions on a held-out sample (those recorded at registration, else the native
model's now, on the input example too); otherwise the native one serves, and
``LoadedModel.fallback_reason`` says why. The native model is loaded only when something
predicts with it (or converts it): a process serving a version's recorded fast path never
imports skops and scikit-learn.

MLflow is imported here for reading models only; writing stays in ``tracking.py``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.contract import InputContract
from mlpipe.drift import PROFILE_FILE, Profile
from mlpipe.errors import UserError
from mlpipe.fastpath import (
    PARITY_ROWS,
    NativePredictor,
    Parity,
    Predictor,
    choose_predictor,
    recorded_parity,
    warm_up,
)
from mlpipe.scoring import CLASSES_FILE

log = logging.getLogger("mlpipe.predictor")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """Which model to serve: a registry name with an alias or version, or a local folder."""

    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None

    def pinned(self, version: str) -> ModelRef:
        """This reference resolved to one registry version (alias kept, for display)."""
        return ModelRef(self.uri, self.name, self.alias, version)


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder holding an MLmodel file."""
    if uri.startswith("models:/"):
        match = _MODELS_URI.match(uri)
        if not match:
            raise UserError(f"--model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return ModelRef(uri, match["name"], match["alias"], match["version"])
    path = Path(uri).expanduser()
    if not (path / "MLmodel").is_file():
        raise UserError(
            f"--model {uri!r}: not a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION) "
            "and not a folder with an MLmodel file"
        )
    return ModelRef(uri, path=path.resolve())


def resolve_version(ref: ModelRef, client: Any) -> str:
    """The registry version ``ref`` points at now (one registry call)."""
    from mlflow.exceptions import MlflowException

    assert ref.name is not None
    try:
        if ref.alias is not None:
            return str(client.get_model_version_by_alias(ref.name, ref.alias).version)
        return str(client.get_model_version(ref.name, ref.version).version)
    except MlflowException as exc:
        store = client.tracking_uri  # registry_client makes it the registry's too
        where = describe_store(store)
        raise UserError(f"model {ref.uri}: {exc.message} in {where}: {STORE_HINT}") from exc


STORE_HINT = (
    "train one there with `mlpipe train`, or set MLFLOW_TRACKING_URI to the store that has it"
)


def describe_store(store: str) -> str:
    """The store a lookup used, as a "not found" names it (a relative SQLite file with the
    folder it is relative to)."""
    if store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        path = Path.cwd() / store.removeprefix("sqlite:///").split("?")[0]
        return f"the MLflow store {store} ({path}; `mlpipe up`'s stack keeps its own)"
    return f"the MLflow store {store}"


def existing_store(tracking_uri: str) -> None:
    """A reader never creates a store: a SQLite file that is not there is a UserError (MLflow
    would create an empty one, 1 MB, in whatever folder the command ran in)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///").split("?")[0])
        if not path.is_file():
            raise UserError(f"{describe_store(tracking_uri)} does not exist: {STORE_HINT}")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict, with what a server reports about it."""

    ref: ModelRef
    run_id: str | None
    contract: InputContract
    signature: dict[str, Any]
    predictor: Predictor
    native: NativePredictor
    parity: Parity | None
    fallback_reason: str | None
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    profile: Profile | None = None  # the training data's, when the version was logged with one
    # a classifier's labels in code order (``classes.json`` beside the model); None: a regressor
    classes: np.ndarray | None = None
    # an XGBoost classifier learned the codes (XGBoost takes no other labels): its ``predict``,
    # and MLflow's pyfunc, answer codes; /predict and `mlpipe score` answer ``classes[code]``
    predicts_codes: bool = False

    @property
    def version(self) -> str | None:
        return self.ref.version

    @cached_property
    def class_names(self) -> list[str]:
        """A classifier's labels as the keys of its probabilities in JSON, in code order."""
        return [] if self.classes is None else [str(c) for c in self.classes.tolist()]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """What MLflow's pyfunc answers: a regressor's values, a classifier's ``predict``."""
        if self.classes is not None and self.predictor.kind != "native":
            return self.classify(matrix)[0]
        return self.predictor.predict(matrix)

    def classify(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A classifier's answer: ``predict``'s, each row's class code (its position in
        ``classes``) and the probabilities (one column per class). On the fast path the label
        is the likeliest class, as a forest's ``predict`` takes it from the same (bit-equal)
        probabilities and a booster's from the same to float32 rounding; natively, the
        model's own ``predict``."""
        assert self.classes is not None
        proba = self.predictor.scores(matrix)
        if self.predictor.kind != "native":
            codes = np.argmax(proba, axis=1)
            return (codes if self.predicts_codes else self.classes[codes]), codes, proba
        predictions = self.predictor.predict(matrix)
        return predictions, np.searchsorted(self.native.model.classes_, predictions), proba

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.ref.name,
            "version": self.ref.version,
            "alias": self.ref.alias,
            "uri": self.ref.uri,
            "run_id": self.run_id,
            "signature": self.signature,
            "predictor": self.predictor.kind,
            "fallback_reason": self.fallback_reason,
            "parity": self.parity.to_dict() if self.parity else None,
            "load_seconds": round(self.load_seconds, 3),
            "loaded_at": self.loaded_at,
        }


def registry_client(tracking_uri: str) -> Any:
    """An MlflowClient on ``tracking_uri``, which also becomes MLflow's global URI: model
    downloads go through MLflow's fluent API, which reads it."""
    import mlflow
    from mlflow import MlflowClient

    existing_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def open_model(
    uri: str, tracking_uri: str, allow_pickle: bool = False, fast: bool = True
) -> LoadedModel:
    """Parse ``uri``, resolve an alias to its version now, and load that version."""
    ref = parse_model_uri(uri)
    if ref.name is not None:
        ref = ref.pinned(resolve_version(ref, registry_client(tracking_uri)))
    return load_model(ref, allow_pickle=allow_pickle, fast=fast)


def load_model(ref: ModelRef, allow_pickle: bool = False, fast: bool = True) -> LoadedModel:
    """Download (registry) and load ``ref``; ``ref`` must name a version or a folder."""
    started = time.perf_counter()
    if ref.path is not None:
        return _load_folder(ref, ref.path, allow_pickle, fast, started)
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="mlpipe-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=tmp
            )
        except Exception as exc:  # MLflow raises several types here (store, HTTP, OS)
            raise UserError(
                f"cannot download model {ref.name} version {ref.version}: {exc}"
            ) from exc
        return _load_folder(ref, Path(local), allow_pickle, fast, started)


def _load_folder(
    ref: ModelRef, path: Path, allow_pickle: bool, fast: bool, started: float
) -> LoadedModel:
    from mlflow.models import Model

    meta = Model.load(str(path))
    if meta.signature is None:
        raise UserError(f"model {ref.uri} has no signature; log it with one to serve it")
    contract = InputContract.from_signature_inputs(
        meta.signature.inputs.to_dict(), _read_categories(path)
    )
    native = NativePredictor.deferred(_native_loader(meta, path, ref, allow_pickle), contract)
    samples, recorded = _parity_samples(meta, path, contract)
    predictor: Predictor = native
    parity: Parity | None = None
    reason: str | None = "fast path disabled (--no-onnx)"
    if fast:
        predictor, parity, reason = choose_predictor(native, contract, path, samples, recorded)
    warm_up(predictor, samples[:1])
    loaded = LoadedModel(
        ref=ref,
        run_id=meta.run_id,
        contract=contract,
        signature={
            "inputs": contract.to_list(),
            "outputs": meta.signature.outputs.to_dict() if meta.signature.outputs else None,
        },
        predictor=predictor,
        native=native,
        parity=parity,
        fallback_reason=reason,
        load_seconds=time.perf_counter() - started,
        profile=_read_profile(path),
        classes=_read_classes(path),
        predicts_codes="xgboost" in meta.flavors,
    )
    if reason:
        log.warning("model %s: serving with the native predictor: %s", ref.uri, reason)
    return loaded


def _read_categories(path: Path) -> dict[str, list[str]]:
    """Each categorical feature's categories in code order (``columns.json``, which `mlpipe
    train` writes for a table with categories; columns.py imports scikit-learn)."""
    file = path / "columns.json"
    return dict(json.loads(file.read_text())["categories"]) if file.is_file() else {}


def _read_classes(path: Path) -> np.ndarray | None:
    """A classifier's labels in code order (None: a regressor)."""
    file = path / CLASSES_FILE
    return np.asarray(json.loads(file.read_text())) if file.is_file() else None


def _read_profile(path: Path) -> Profile | None:
    file = path / PROFILE_FILE
    if not file.is_file():
        return None
    try:
        return Profile.from_json(file.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("model %s: ignoring its unreadable %s: %s", path, PROFILE_FILE, exc)
        return None


def _native_loader(meta: Any, path: Path, ref: ModelRef, allow_pickle: bool) -> Any:
    """What loads the native model, once its flavor and format are checked (now, so a pickle
    or an unknown flavor is refused when the version loads, not at its first native predict).
    It reads ``path``, or once that download is gone, the registry version again."""
    flavors = meta.flavors
    flavor = next((name for name in ("sklearn", "xgboost") if name in flavors), None)
    if flavor is None:
        raise UserError(
            f"model {ref.uri} has flavors {sorted(flavors)}; mlpipe serves scikit-learn (skops) "
            "and XGBoost models"
        )
    fmt = flavors[flavor].get("serialization_format", "pickle")
    if flavor == "sklearn" and fmt != "skops" and not allow_pickle:
        raise UserError(
            f"model {ref.uri} is stored as a {fmt} file, and loading a pickle runs whatever "
            "code it holds; log it with serialization_format='skops' (mlpipe train does), "
            "or pass --allow-pickle if you trust its source"
        )

    def load() -> Any:
        import importlib

        source = (
            str(path) if path.is_dir() or ref.name is None else f"models:/{ref.name}/{ref.version}"
        )
        try:
            return importlib.import_module(f"mlflow.{flavor}").load_model(source)
        except ModuleNotFoundError as exc:  # the serving image serves the ONNX fast path only
            raise UserError(
                f"model {ref.uri} needs its native predictor here (no ONNX fast path, or "
                f"--no-onnx), and this installation has no {exc.name}: serve it with the full "
                "image (mlpipe, not mlpipe-serve) or an install of mlpipe with its dependencies"
            ) from exc

    return load


def _parity_samples(
    meta: Any, path: Path, contract: InputContract
) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows the fast path is checked on, and the native predictions recorded for them at
    registration (None: not recorded, the native model predicts them): the held-out rows
    logged with the model; without their predictions, the input example plus those rows, or
    the input example and seeded draws around it."""
    held_out = recorded_parity(path, contract, getattr(meta, "model_id", None))
    if held_out is not None and held_out[1] is not None:
        return held_out
    rows: list[np.ndarray] = []
    example = meta.load_input_example(str(path))
    if example is not None:
        rows.append(_as_matrix(example, contract))
    if held_out is not None:
        rows.append(held_out[0])
    if not rows:
        raise UserError("the model has no input example to check its predictor on")
    matrix = np.vstack(rows)
    if held_out is None:
        rng = np.random.default_rng(0)
        draws = matrix[rng.integers(0, len(matrix), PARITY_ROWS)]
        matrix = np.vstack([matrix, draws * rng.uniform(0.8, 1.2, draws.shape)])
    return matrix, None


def _as_matrix(example: Any, contract: InputContract) -> np.ndarray:
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        return contract.matrix_from_rows(list(example.columns), example.to_numpy().tolist())
    return np.asarray(example, dtype=np.float64).reshape(-1, len(contract.names))


def load_pyfunc(model_uri: str) -> Any:
    """Load a registered or logged model as an MLflow pyfunc model (``predictor.load_model``
    is mlpipe's own loading, with the fast path)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri)


def load_native(model_uri: str) -> Any:
    """A registered or logged model in its own flavor (scikit-learn's, through skops with the
    types its MLmodel trusts, or XGBoost's): what has ``predict_proba``."""
    import importlib

    from mlflow.models import get_model_info

    flavor = "xgboost" if "xgboost" in get_model_info(model_uri).flavors else "sklearn"
    return importlib.import_module(f"mlflow.{flavor}").load_model(model_uri)


# MLflow column types and the numpy types pyfunc's schema enforcement takes for them.
_PANDAS_TYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}


def predict_frame(model: Any, frame: Any) -> Any:
    """A pyfunc model's predictions for ``frame`` (float64 features), its columns first cast to
    the types of the model's signature: versions registered before mlpipe kept the table's
    integer columns declare every column double, later ones declare integers as such."""
    schema = model.metadata.get_input_schema()
    types = {} if schema is None else {c.name: getattr(c.type, "name", "") for c in schema.inputs}
    cast = {c: _PANDAS_TYPES[types[c]] for c in frame.columns if types.get(c) in _PANDAS_TYPES}
    return np.asarray(model.predict(frame.astype(cast))).ravel()
