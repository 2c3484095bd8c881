"""The MLflow Model Registry side of a search: the model logged with its fast path and files,
registered, tagged, and the champion alias. A part of ``tracking.Tracker`` (which gives it its
``client`` and ``experiment_id``); split out so that each module holds one noun.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAMPION, CHALLENGER = "champion", "challenger"

# MLflow 3.17 saves scikit-learn models with skops, which refuses to load any type it is not told
# to trust. A forest's trees are sklearn.tree._tree.Tree: trusting exactly that type (and nothing
# broader) lets the model load without falling back to pickle, which would run arbitrary code.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
# A LightGBM estimator holds its Booster, which skops rebuilds from LightGBM's own text model
# (no code runs); these are the types skops lists for one, nothing broader.
LIGHTGBM_TRUSTED_TYPES = [
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
]


@dataclass(frozen=True)
class Promotion:
    """What the registry did with a new version: its score on the test split and the
    champion's on the same split (``scoring``: the search's primary score)."""

    version: str
    alias: str
    test_score: float
    champion_version: str | None
    champion_score: float | None
    scoring: str = "mse"

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


class Registry:
    """Model and registry calls of a ``Tracker``: its ``client`` and ``experiment_id``."""

    client: Any
    experiment_id: str

    @staticmethod
    def pip_requirements(family: str, pipeline: bool = False) -> list[str]:
        """The exact versions this process runs. Listing them spares MLflow its requirement
        inference (a subprocess that reloads the model: 7 s of a 9 s registration here). A
        pipeline (a table with categories) is stored with skops whatever its family."""
        from importlib.metadata import version

        packages = ["mlflow", "numpy", "pandas", "scipy", "scikit-learn"]
        packages += {"xgboost": ["xgboost-cpu"], "lightgbm": ["lightgbm"]}.get(family, [])
        if family != "xgboost" or pipeline:
            packages.append("skops")
        return [f"{name}=={version(name)}" for name in packages]

    def log_model(
        self,
        run_id: str,
        family: str,
        model: Any,
        input_example: Any,
        signature: Any,
        model_name: str,
        held_out: Any = None,
        files: Mapping[str, str] | None = None,
        categories: dict[str, list[str]] | None = None,
    ) -> tuple[str, str]:
        """Log the model to the run, with its ONNX fast path, a held-out parity sample and
        ``files`` (name -> text, e.g. the training data profile) beside it, and register it;
        returns (model uri, registered version)."""
        import mlflow

        # The registry prints "Successfully registered model ..." straight to stderr; keep it
        # with MLflow's other logs rather than in the middle of a user's progress output.
        chatter = io.StringIO()
        with (
            contextlib.redirect_stderr(chatter),
            mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id),
        ):
            pipeline = type(model).__name__ == "Pipeline"
            if family == "xgboost" and not pipeline:
                import mlflow.xgboost

                info = mlflow.xgboost.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    registered_model_name=model_name,
                    pip_requirements=self.pip_requirements(family),
                )
            else:
                import mlflow.sklearn

                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    serialization_format="skops",
                    skops_trusted_types=trusted_types(model, family)
                    if pipeline
                    else (
                        SKOPS_TRUSTED_TYPES
                        + (LIGHTGBM_TRUSTED_TYPES if family == "lightgbm" else [])
                    ),
                    registered_model_name=model_name,
                    pip_requirements=self.pip_requirements(family, pipeline),
                )
            # start_run(run_id=...) ends the run on exit; the caller decides its final status.
        self._log_model_files(info.model_id, model, held_out, files or {}, categories)
        if chatter.getvalue().strip():
            logging.getLogger("mlflow").info(chatter.getvalue().strip())
        self.client.update_run(run_id, status="RUNNING")
        return str(info.model_uri), str(info.registered_model_version)

    def _log_model_files(
        self,
        model_id: str,
        model: Any,
        held_out: Any,
        files: Mapping[str, str],
        categories: dict[str, list[str]] | None,
    ) -> None:
        import tempfile

        from mlpipe.fastpath import export_fast_path

        with tempfile.TemporaryDirectory(prefix="mlpipe-model-files-") as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(text)
            if held_out is not None:
                export_fast_path(
                    model, held_out.shape[1], held_out, Path(tmp), model_id, categories
                )
            if any(Path(tmp).iterdir()):
                self.client.log_model_artifacts(model_id, tmp)

    def tag_version(self, model_name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name, version, key, value)

    def champion_version(self, model_name: str) -> str | None:
        """The version holding the champion alias, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(model_name, CHAMPION).version)
        except MlflowException:
            return None

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def version_of_run(self, model_name: str, run_id: str) -> str | None:
        """The version of ``model_name`` registered from ``run_id``, if any."""
        found = self.client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
        return str(found[0].version) if found else None


def download_model(model_uri: str, destination: Path) -> Path:
    """Copy the logged model's files (MLmodel, weights, environment) into ``destination``."""
    import mlflow.artifacts

    destination.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination))
    )


def trusted_types(model: Any, family: str) -> list[str]:
    """The types skops must be told to trust to load ``model``: exactly those it is made of
    (for a pipeline: mlpipe's column step, the trees, the booster, the predictors), read from
    the model's own skops form."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def infer_signature(features: Any, predictions: Any, optional: Sequence[str] = ()) -> Any:
    """MLflow's signature of a table of features (in the types as loaded) and predictions; the
    ``optional`` columns (missing somewhere in the training data, if not in ``features``) are
    marked as such, so MLflow's pyfunc takes a missing value there."""
    import warnings

    from mlflow.models import infer_signature as infer
    from mlflow.types.schema import ColSpec, Schema

    with warnings.catch_warnings():
        # MLflow's hint that integer columns cannot hold missing values: mlpipe's contract
        # refuses missing values anyway, and the hint would print in the middle of `train`.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer(features, predictions)
    if optional:
        signature.inputs = Schema(
            [
                ColSpec(c.type, c.name, required=c.required and c.name not in optional)
                for c in signature.inputs.inputs
            ]
        )
    return signature
