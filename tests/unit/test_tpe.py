"""The TPE study in batches: Optuna's distributions of the spec's space, and configs that depend
on the seed and batch size alone (asked, then told in the order asked)."""

from __future__ import annotations

import optuna

from mlpipe.spec import Spec
from mlpipe.trial import TrialResult
from mlpipe.tune.tpe import Study, distributions

SPEC = {
    "seed": 3,
    "search": {
        "strategy": "tpe",
        "n_trials": 30,
        "params": {
            "n_estimators": {"low": 10, "high": 200, "log": True},
            "max_features": {"low": 0.2, "high": 1.0},
            "max_depth": [None, 4, 8],
        },
    },
}


def test_the_space_in_optunas_terms():
    space = distributions(Spec.model_validate(SPEC))
    assert space["n_estimators"] == optuna.distributions.IntDistribution(10, 200, log=True)
    assert space["max_features"] == optuna.distributions.FloatDistribution(0.2, 1.0)
    assert space["max_depth"] == optuna.distributions.CategoricalDistribution([None, 4, 8])


def score(params: dict) -> float:
    return (params["max_features"] - 0.5) ** 2 + params["n_estimators"] / 1e3


def run(spec: Spec) -> list[dict]:
    """Ask and tell 30 trials in batches of the spec's size, each scored by ``score``."""
    study, seen = Study(spec, "fp"), []
    while len(seen) < 30:
        trials = study.ask(min(spec.search.batch_size, 30 - len(seen)))
        study.tell([TrialResult(t.trial_id, t.index, t.params, mean_score=score(t.params))
                    for t in trials])  # fmt: skip
        seen += [t.params for t in trials]
    return seen


def test_the_configs_depend_on_seed_and_batch_size_only():
    spec = Spec.model_validate(SPEC)
    first = run(spec)
    assert run(spec) == first
    assert run(Spec.model_validate({**SPEC, "seed": 4})) != first
    wider = {**SPEC, "search": {**SPEC["search"], "batch_size": 8}}
    assert run(Spec.model_validate(wider)) != first
    assert all(10 <= c["n_estimators"] <= 200 and 0.2 <= c["max_features"] <= 1 for c in first)
    late = [score(c) for c in first[20:]]  # past the random start-up, TPE goes where it scores
    assert sorted(late)[len(late) // 2] < sorted(score(c) for c in first[:10])[5]
