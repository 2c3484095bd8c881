"""The pipeline spec: a YAML file validated with pydantic, plus single-field overrides from flags.

Defaults live here and only here. ``load_spec`` is the one place a spec is read and checked; every
other module receives a validated ``Spec``. Pure: imports neither Prefect nor MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlpipe.errors import SpecError
from mlpipe.models import FAMILIES, Family, get_family, refused_value
from mlpipe.scoring import DEFAULT_SCORING, SCORINGS, allowed
from mlpipe.space import Range, parse_range
from mlpipe.spec_example import EXAMPLE_SPEC

# scikit-learn's bundled tables (no download); breast_cancer is binary, wine and iris multiclass
BUILTIN_TARGETS = {
    "boston": "MEDV",
    "diabetes": "target",
    "synthetic": "target",
    "breast_cancer": "target",
    "wine": "target",
    "iris": "target",
}
BUILTIN_SOURCES = tuple(BUILTIN_TARGETS)
CLASSIFICATION_SOURCES = ("breast_cancer", "wine", "iris")
FAMILY_SHORT = {
    "random_forest": "rf",
    "extra_trees": "et",
    "hist_gradient_boosting": "hgb",
    "xgboost": "xgb",
    "lightgbm": "lgbm",
}
Scalar = int | float | str | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    """Where the table comes from and which column is predicted."""

    source: str = "boston"
    target: str | None = None  # None: the built-in source's own target (MEDV, target)
    test_size: float = Field(0.2, gt=0, lt=1)
    rows: int = Field(1000, ge=10, description="synthetic only")
    features: int = Field(10, ge=1, description="synthetic only")
    noise: float = Field(10.0, ge=0, description="synthetic only")
    categorical: list[str] = Field(
        default_factory=list, description="integer-coded columns to take as categories"
    )
    drop: list[str] = Field(default_factory=list, description="columns left out of the features")

    @property
    def is_builtin(self) -> bool:
        return self.source in BUILTIN_SOURCES

    @property
    def name(self) -> str:
        """A short name for experiment and model names: the source, or the file's stem."""
        return self.source if self.is_builtin else Path(self.source).stem

    @property
    def target_column(self) -> str:
        if self.target is not None:
            return self.target
        if self.is_builtin:
            return BUILTIN_TARGETS[self.source]
        raise SpecError(f"data.target is required for a file source ({self.source})")


class ModelSpec(_Strict):
    family: Literal[
        "random_forest", "extra_trees", "hist_gradient_boosting", "xgboost", "lightgbm"
    ] = "random_forest"
    task: Literal["regression", "classification"] = "regression"


class SearchSpec(_Strict):
    """What to try. ``params: null`` means the family's default search space. A parameter is a
    list of values, or a ``Range`` (random search)."""

    strategy: Literal["grid", "random", "halving", "tpe"] = "grid"
    cv: int = Field(3, ge=2)
    scoring: str | None = Field(
        None, description="the primary score (scoring.SCORINGS); None: the task's default"
    )
    params: dict[str, list[Scalar] | Range] | None = None
    n_trials: int | None = Field(None, ge=1, description="random, tpe (halving: its candidates)")
    batch_size: int = Field(
        4, ge=1, description="tpe: configs asked before their scores are told back"
    )
    sampler: Literal["tpe", "qmc"] | None = Field(
        None, description="tpe: Optuna's sampler by name: tpe (None: tpe), or qmc (scrambled Sobol)"
    )
    retries: int = Field(0, ge=0, description="Prefect task retries per trial")
    retry_delay_seconds: float = Field(0.0, ge=0)
    # successive halving, as scikit-learn's HalvingGridSearchCV / HalvingRandomSearchCV
    candidates: Literal["grid", "random"] = Field(
        "grid", description="halving: what it starts from"
    )
    resource: str = Field("n_samples", description="halving: n_samples or the family's size")
    factor: int = Field(3, ge=2, description="halving: 1/factor of the candidates go on")
    min_resources: int | Literal["smallest", "exhaust"] | None = Field(
        None, description="halving; None: scikit-learn's (grid: exhaust, random: smallest)"
    )
    max_resources: int | None = Field(None, ge=1, description="halving; n_samples: the rows")
    aggressive_elimination: bool = False

    @field_validator("params", mode="before")
    @classmethod
    def _lists_and_ranges(cls, value: Any) -> Any:
        """A scalar is a one-value list; a mapping is a ``Range`` (its errors named as such)."""
        if not isinstance(value, dict):
            return value
        return {k: parse_range(k, v) if isinstance(v, dict) else v if isinstance(v, (list, Range))
                else [v] for k, v in value.items()}  # fmt: skip

    @property
    def first_resources(self) -> int | str:
        """Halving's min_resources, with scikit-learn's default for the candidates' kind."""
        if self.min_resources is not None:
            return self.min_resources
        return "exhaust" if self.candidates == "grid" else "smallest"

    @property
    def sampling(self) -> str:
        """How the configs (halving: its first candidates) are chosen: grid, random or tpe."""
        return self.candidates if self.strategy == "halving" else self.strategy

    @property
    def stepwise(self) -> bool:
        """Whether later trials depend on earlier results (halving's rungs, tpe's batches):
        ``tune/stepwise.py`` runs it, and its shards wait for each other at every step."""
        return self.strategy in ("halving", "tpe")

    @property
    def ranges(self) -> list[str]:
        """The parameters given as ranges."""
        return [k for k, v in (self.params or {}).items() if isinstance(v, Range)]


def _check_halving(search: SearchSpec, size: str, space: dict[str, Any], default: bool) -> None:
    """A resource the family has, not searched; resources that fit (``min <= max``)."""
    if search.resource not in ("n_samples", size):
        raise ValueError(
            f"search.resource: {search.resource!r} is not a resource of this family; use "
            f"n_samples or {size}"
        )
    if search.resource in space:
        where = " (the family's default space has it: give search.params)" if default else ""
        raise ValueError(
            f"search.params.{search.resource}: it is the halving resource; remove it from the "
            f"searched parameters (halving sets it){where}"
        )
    if search.resource != "n_samples" and search.max_resources is None:
        raise ValueError(
            f"search.max_resources: required when search.resource is {search.resource} (the "
            f"largest {search.resource} the last rung gets)"
        )
    if (
        isinstance(search.min_resources, int)
        and search.max_resources is not None
        and search.min_resources > search.max_resources
    ):
        raise ValueError(
            f"search.min_resources: {search.min_resources} is larger than search.max_resources "
            f"{search.max_resources}"
        )
    if isinstance(search.min_resources, int) and search.min_resources < 1:
        raise ValueError(f"search.min_resources: {search.min_resources}; give at least 1")


class TrackingSpec(_Strict):
    experiment: str | None = None  # None: "<data>-<family>", e.g. boston-rf


class RegistrySpec(_Strict):
    model_name: str | None = None  # None: same as the experiment


class MonitoringSpec(_Strict):
    """Drift thresholds, stored in the training data profile of every registered version: batch
    runs and the server compare their inputs with that profile and flag what crosses them."""

    psi_threshold: float | None = Field(0.2, gt=0, description="None: PSI flags nothing")
    ks_threshold: float | None = Field(None, gt=0, le=1, description="None: KS flags nothing")
    min_rows: int = Field(100, ge=1, description="fewer rows: figures only, no flag")
    window: int = Field(1000, ge=10, description="the server's sliding window, in rows")
    p_value: float | None = Field(
        0.01,
        gt=0,
        lt=1,
        description="the chance that in-distribution rows raise an alarm; None: thresholds only",
    )

    @model_validator(mode="after")
    def _something_flags(self) -> MonitoringSpec:
        if self.psi_threshold is None and self.ks_threshold is None:
            raise ValueError(
                "monitoring: psi_threshold and ks_threshold are both null; set one of them"
            )
        return self


class Spec(_Strict):
    """A whole tuning run."""

    seed: int = 42
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    search: SearchSpec = SearchSpec()
    tracking: TrackingSpec = TrackingSpec()
    registry: RegistrySpec = RegistrySpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    artifacts_dir: Path = Path("artifacts")
    n_jobs: int = Field(-1, description="trials run at once; -1 = all cores")
    executor: str = Field(
        "process", description="where trials run: process | dask-local | dask://HOST:PORT"
    )

    @model_validator(mode="after")
    def _search_fits_family(self) -> Spec:
        scoring, task = self.search.scoring, self.model.task
        if scoring is not None and (scoring not in SCORINGS or SCORINGS[scoring].task != task):
            raise ValueError(
                f"search.scoring: {scoring!r} does not score {task}; use one of "
                f"{', '.join(allowed(task))}"
            )
        if self.data.source in CLASSIFICATION_SOURCES and task == "regression":
            raise ValueError(
                f"data.source {self.data.source}: a classification table (scikit-learn's "
                f"load_{self.data.source}); set model.task: classification"
            )
        family = self.family
        params = self.search.params
        if params is not None:
            if not params:
                raise ValueError("search.params: the grid is empty; give at least one value")
            unknown = sorted(set(params) - family.hyperparameters)
            if unknown:
                raise ValueError(
                    f"search.params: unknown hyperparameter(s) {', '.join(unknown)} for family "
                    f"{family.name}; allowed: {', '.join(sorted(family.hyperparameters))}"
                )
            empty = sorted(name for name, values in params.items() if not values)
            if empty:
                raise ValueError(
                    f"search.params.{empty[0]}: the list is empty; give at least one value"
                )
            if self.search.ranges and self.search.sampling == "grid":
                name = self.search.ranges[0]
                raise ValueError(
                    f"search.params.{name}: a range needs search.strategy random or tpe (with "
                    "n_trials); a grid takes a list of values"
                )
            refused = refused_value(family, self.search_space)
            if refused:
                raise ValueError(refused)
        if self.search.strategy in ("random", "tpe") and self.search.n_trials is None:
            raise ValueError(
                f"search.n_trials: required when search.strategy is {self.search.strategy}"
            )
        if self.search.strategy == "halving":
            _check_halving(self.search, family.size_param, self.search_space, params is None)
        if self.search.sampler is not None and self.search.strategy != "tpe":
            raise ValueError(
                f"search.sampler: {self.search.sampler} picks Optuna's sampler for search.strategy "
                f"tpe; this search's strategy is {self.search.strategy}"
            )
        if not _valid_executor(self.executor):
            raise ValueError(
                f"executor: {self.executor!r} is not one of process, dask-local, "
                "dask://HOST:PORT (a Dask scheduler's address, e.g. dask://scheduler:8786)"
            )
        if self.n_jobs == 0 or self.n_jobs < -1:
            raise ValueError(f"n_jobs: {self.n_jobs} is not allowed; use -1 (all cores) or >= 1")
        return self

    @property
    def search_space(self) -> dict[str, list[Any] | Range]:
        """The space to search: the spec's, else the family's default grid."""
        if self.search.params is not None:
            return dict(self.search.params)
        return {k: list(v) for k, v in self.family.default_space.items()}

    @property
    def scoring(self) -> str:
        """The search's primary score: ``search.scoring``, or the task's default."""
        return self.search.scoring or DEFAULT_SCORING[self.model.task]

    @property
    def family(self) -> Family:
        """The model family for the spec's task and scoring (``Family.key`` names it)."""
        return get_family(self.model.family, self.model.task, self.scoring)

    @property
    def experiment_name(self) -> str:
        default = f"{self.data.name}-{FAMILY_SHORT[self.model.family]}"
        return self.tracking.experiment or default

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.experiment_name


def _valid_executor(executor: str) -> bool:
    if executor in ("process", "dask-local"):
        return True
    host, sep, port = executor.removeprefix("dask://").rpartition(":")
    return executor.startswith("dask://") and bool(sep and host) and port.isdigit()


def load_spec(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Spec:
    """Read ``path`` (or the defaults), apply dotted ``overrides`` and validate once."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise SpecError(f"invalid spec{where}:\n" + format_validation_error(exc)) from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path} must be a mapping of keys, got {type(raw).__name__}")
    return raw


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: the field, what is wrong, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            owner = _model_at(err["loc"][:-1])
            allowed = ", ".join(owner.model_fields) if owner else "see `mlpipe init`"
            lines.append(f"  {loc}: unknown key; allowed here: {allowed}")
        elif err["type"] == "value_error":
            lines.append(f"  {str(err['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Spec
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


__all__ = ["EXAMPLE_SPEC", "FAMILIES", "Spec", "load_spec"]
