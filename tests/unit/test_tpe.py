"""The TPE study in batches: Optuna's distributions of the spec's space, and configs that depend
on the seed and batch size alone (asked, then told in the order asked)."""

from __future__ import annotations

import optuna
import pytest

from mlpipe.spec import Spec
from mlpipe.trial import TrialResult
from mlpipe.tune.tpe import Study, distributions, param_importances

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
    return [r.params for r in results(spec)]


def results(spec: Spec) -> list[TrialResult]:
    study, done = Study(spec, "fp"), []
    while len(done) < 30:
        trials = study.ask(min(spec.search.batch_size, 30 - len(done)))
        batch = [TrialResult(t.trial_id, t.index, t.params, mean_score=score(t.params))
                 for t in trials]  # fmt: skip
        study.tell(batch)
        done += batch
    return done


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


def test_param_importances_find_what_the_score_depends_on():
    spec = Spec.model_validate(SPEC)
    found = param_importances(spec, results(spec))
    assert found == param_importances(spec, results(spec))  # seeded
    assert list(found)[-1] == "max_depth"  # the score ignores it; largest first
    assert found["max_depth"] < 0.05 and sum(found.values()) == pytest.approx(1.0)
    assert param_importances(spec, results(spec)[:1]) is None  # one trial explains nothing


def test_samplers_by_name_are_seeded_and_differ():
    qmc = {**SPEC, "search": {**SPEC["search"], "sampler": "qmc"}}
    first = run(Spec.model_validate(qmc))
    assert run(Spec.model_validate(qmc)) == first  # the same Sobol points, in batches
    assert first != run(Spec.model_validate(SPEC))  # not TPE's
    assert all(10 <= c["n_estimators"] <= 200 and 0.2 <= c["max_features"] <= 1 for c in first)
    # a low-discrepancy sequence: every fifth of max_features' range gets some of the 30
    fifths = {min(int((c["max_features"] - 0.2) / 0.16), 4) for c in first}
    assert fifths == {0, 1, 2, 3, 4}
