import pytest
import yaml

from mlpipe.errors import SpecError
from mlpipe.models import FAMILIES
from mlpipe.spec import EXAMPLE_SPEC, Spec, load_spec


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_documented_example(tmp_path):
    default = load_spec()
    example = load_spec(write(tmp_path, EXAMPLE_SPEC))
    assert default.search_space == example.search_space
    assert default.experiment_name == example.experiment_name == "boston-rf"
    assert default.model_name == example.model_name == "boston-rf"
    assert default.data.target_column == example.data.target_column == "MEDV"
    assert (default.seed, default.search.cv, default.data.test_size) == (42, 3, 0.2)
    assert default.search_space["max_depth"] == [None, 10, 20]


def test_overrides_set_single_fields():
    spec = load_spec(None, {"data.source": "diabetes", "search.cv": 5, "model.family": "xgboost"})
    assert spec.data.source == "diabetes" and spec.data.target_column == "target"
    assert spec.search.cv == 5
    assert spec.experiment_name == "diabetes-xgb"
    assert "learning_rate" in spec.search_space  # the family's default space


RANDOM = "search:\n  strategy: random\n  n_trials: 5\n  params:\n"
HALVING = "search:\n  strategy: halving\n"


def test_a_range_is_int_or_float_linear_or_log():
    raw = {
        "n_estimators": {"low": 10, "high": 50},
        "max_features": {"low": 0.2, "high": 1},
        "min_samples_leaf": {"low": 1, "high": 20, "log": True},
        "min_impurity_decrease": {"low": 1e-4, "high": 1e-1, "log": True, "type": "float"},
        "max_depth": 4,
    }
    search = {"strategy": "random", "n_trials": 4, "params": raw}
    params = Spec.model_validate({"search": search}).search.params
    assert [params[k].kind for k in list(raw)[:4]] == ["int", "float", "int", "float"]
    assert params["max_features"].ends == [0.2, 1.0] and params["max_depth"] == [4]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour: red\n", "colour: unknown key; allowed here: seed, data"),
        ("data:\n  sauce: boston\n", "data.sauce: unknown key; allowed here: source, target"),
        (
            "search:\n  params:\n    n_trees: [1]\n",
            "unknown hyperparameter(s) n_trees for family random_forest",
        ),
        ("search:\n  params: {}\n", "the grid is empty"),
        ("search:\n  params:\n    max_depth: []\n", "search.params.max_depth: the list is empty"),
        ("search:\n  cv: 1\n", "search.cv: Input should be greater than or equal to 2 (got 1)"),
        (
            "search:\n  strategy: bayes\n",
            "search.strategy: Input should be 'grid', 'random', 'halving' or 'tpe'",
        ),
        (
            "search:\n  strategy: random\n",
            "search.n_trials: required when search.strategy is random",
        ),
        (
            "model:\n  family: svm\n",
            "model.family: Input should be 'random_forest', 'extra_trees', "
            "'hist_gradient_boosting', 'xgboost' or 'lightgbm'",
        ),
        ("data:\n  test_size: 1.5\n", "data.test_size: Input should be less than 1 (got 1.5)"),
        ("n_jobs: 0\n", "n_jobs: 0 is not allowed"),
        (
            "search:\n  params:\n    max_features: {low: 0.2, high: 0.9}\n",
            "search.params.max_features: a range needs search.strategy random",
        ),
        (
            RANDOM + "    max_features: {low: 0.9, high: 0.2}\n",
            "search.params.max_features: low (0.9) must be below high (0.2)",
        ),
        (
            RANDOM + "    min_impurity_decrease: {low: 0, high: 0.1, log: true}\n",
            "search.params.min_impurity_decrease: a log range needs low > 0 (got 0)",
        ),
        (
            RANDOM + "    max_depth: {low: 2.5, high: 9, type: int}\n",
            "search.params.max_depth: an int range needs whole ends (got 2.5, 9)",
        ),
        (RANDOM + "    max_depth: {low: 2}\n", "search.params.max_depth.high: Field required"),
        (
            RANDOM + "    max_features: {low: 0.5, high: 1.5}\n",
            "search.params.max_features: 1.5 is not allowed: The 'max_features' parameter",
        ),
        ("search:\n  strategy: tpe\n", "search.n_trials: required when search.strategy is tpe"),
        (
            "search:\n  strategy: tpe\n  n_trials: 5\n  batch_size: 0\n",
            "search.batch_size: Input should be greater than or equal to 1",
        ),
        (
            "search:\n  strategy: tpe\n  n_trials: 5\n  sampler: cmaes\n",
            "search.sampler: Input should be 'tpe' or 'qmc'",
        ),
        (
            "search:\n  sampler: qmc\n",
            "search.sampler: qmc picks Optuna's sampler for search.strategy tpe; this search's "
            "strategy is grid",
        ),
        (HALVING + "  factor: 1\n", "search.factor: Input should be greater than or equal to 2"),
        (HALVING + "  resource: max_depth\n", "search.resource: 'max_depth' is not a resource"),
        (
            HALVING + "  resource: n_estimators\n  params:\n    max_depth: [3]\n",
            "search.max_resources: required when search.resource is n_estimators",
        ),
        (
            HALVING + "  resource: n_estimators\n  max_resources: 50\n",
            "it is the halving resource; remove it from the searched parameters (halving sets "
            "it) (the family's default space has it: give search.params)",
        ),
        (
            HALVING + "  resource: n_estimators\n  max_resources: 50\n  params:\n"
            "    n_estimators: [10]\n",
            "search.params.n_estimators: it is the halving resource",
        ),
        (
            HALVING + "  min_resources: 100\n  max_resources: 50\n",
            "search.min_resources: 100 is larger than search.max_resources 50",
        ),
        (HALVING + "  min_resources: 0\n", "search.min_resources: 0; give at least 1"),
        (
            RANDOM + "    n_estimators: {low: 10.0, high: 50.0}\n",
            "search.params.n_estimators: 10.0 is not allowed; give whole numbers >= 1",
        ),
    ],
)
def test_bad_spec_names_field_value_and_allowed(tmp_path, text, needle):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert needle in str(info.value)


def test_xgboost_params_are_checked_against_xgboost(tmp_path):
    text = "model:\n  family: xgboost\nsearch:\n  params:\n    min_samples_leaf: [1]\n"
    with pytest.raises(SpecError, match="min_samples_leaf for family xgboost"):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    ("family", "params", "needle"),
    [
        ("random_forest", "n_estimators: [10, -3]", "n_estimators: -3 is not allowed; give whole"),
        ("random_forest", "n_estimators: [true]", "n_estimators: True is not allowed"),
        ("random_forest", "n_estimators: [2.5]", "n_estimators: 2.5 is not allowed"),
        (
            "random_forest",
            "max_depth: [4, deep]",
            "max_depth: 'deep' is not allowed: The 'max_depth' parameter of "
            "RandomForestRegressor must be an int in the range [1, inf) or None. Got 'deep'",
        ),
        ("random_forest", "min_samples_leaf: [0]", "min_samples_leaf: 0 is not allowed: The"),
        ("random_forest", "criterion: [gini]", "must be a str among"),
        ("xgboost", "n_estimators: [0]", "n_estimators: 0 is not allowed"),
        (
            "xgboost",
            "max_depth: [deep]",
            "max_depth: 'deep' is not allowed: Invalid Parameter format for max_depth expect int",
        ),
        ("xgboost", "subsample: [2.0]", "subsample: 2.0 is not allowed: value 2 for Parameter"),
        ("xgboost", "learning_rate: [-1]", "learning_rate: -1 is not allowed"),
        ("xgboost", "booster: [x]", "booster: 'x' is not allowed: Unknown gbm type x"),
    ],
)
def test_a_value_the_estimator_refuses_is_refused_in_the_spec(tmp_path, family, params, needle):
    text = f"model:\n  family: {family}\nsearch:\n  params:\n    {params}\n"
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert needle in str(info.value)
    assert "Stack trace" not in str(info.value) and "[bt]" not in str(info.value)


def test_every_default_space_is_accepted():
    for family in FAMILIES:
        assert load_spec(None, {"model.family": family}).search_space


def test_reserved_arguments_cannot_be_searched(tmp_path):
    with pytest.raises(SpecError, match="random_state"):
        load_spec(write(tmp_path, "search:\n  params:\n    random_state: [1, 2]\n"))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_scalar_param_is_a_one_value_grid(tmp_path):
    spec = load_spec(write(tmp_path, "search:\n  params:\n    n_estimators: 10\n"))
    assert spec.search_space == {"n_estimators": [10]}


def test_file_source_needs_a_target():
    spec = Spec.model_validate({"data": {"source": "houses.csv"}})
    with pytest.raises(SpecError, match=r"data\.target is required"):
        _ = spec.data.target_column


def test_example_is_valid_yaml_with_every_section():
    raw = yaml.safe_load(EXAMPLE_SPEC)
    assert set(raw) >= {"seed", "data", "model", "search", "tracking", "registry", "artifacts_dir"}


@pytest.mark.parametrize(
    "search",
    [
        {},
        {"strategy": "random", "n_trials": 5},
        {"strategy": "halving"},
        {"strategy": "tpe", "n_trials": 5},
        {"strategy": "tpe", "n_trials": 5, "sampler": "qmc"},
    ],
)
def test_a_spec_survives_its_trip_through_a_flow_parameter(search):
    """The flows take the spec as JSON (``model_dump``) and validate it again."""
    spec = Spec.model_validate({"search": search})
    assert Spec.model_validate(spec.model_dump(mode="json")) == spec
