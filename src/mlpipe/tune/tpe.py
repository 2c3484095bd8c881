"""Model-based search with Optuna's TPE sampler (or another by name: ``sampler``), reproducible
at any parallelism.

Optuna's sampler asks ``batch_size`` configurations, the flow cross-validates them as tasks (the
same as any search's), and their mean CV MSE is told back in the order they were asked, never in
the order they finished. So the configurations tried depend on the seed, the space and
``batch_size`` only: one worker, two, or a Dask cluster try the same ones (Optuna's own parallel
``optimize`` does not: optuna#3056, #6062).

The study lives in the flow (``Batches``: the steps ``stepwise`` runs, on one machine or across
shards). It is rebuilt each run by asking again, batch by batch, with the same seeded sampler: a
batch whose trials MLflow already holds (finished in an interrupted or an earlier, shorter run
of this search) is told their logged scores instead of being computed, so a resumed or extended
search (a larger ``n_trials``) never recomputes a finished trial. The search id leaves
``n_trials`` out for that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlpipe.search import Step, TrialConfig, make_trials
from mlpipe.space import Range
from mlpipe.spec import Spec
from mlpipe.trial import TrialResult

if TYPE_CHECKING:
    from mlpipe.tune.plan import Prepared


def distributions(spec: Spec) -> dict[str, Any]:
    """Optuna's distributions of the search space: a list is categorical, a range an int or
    float distribution (log or not), both ends included."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    found: dict[str, Any] = {}
    for name, values in sorted(spec.search_space.items()):
        if isinstance(values, Range):
            kind = IntDistribution if values.kind == "int" else FloatDistribution
            low, high = values.ends
            found[name] = kind(low, high, log=values.log)  # type: ignore[arg-type]
        else:
            found[name] = CategoricalDistribution(list(values))
    return found


def sampler(spec: Spec) -> Any:
    """Optuna's sampler that ``search.sampler`` names, seeded by the spec: ``tpe`` (the
    Tree-structured Parzen Estimator) or ``qmc`` (a scrambled Sobol sequence; categorical
    parameters drawn at random beside it, as Optuna's QMCSampler does)."""
    import warnings

    import optuna

    if spec.search.sampler == "qmc":
        with warnings.catch_warnings():  # "experimental since 3.0": a user can do nothing about it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=spec.seed, warn_independent_sampling=False
            )
    return optuna.samplers.TPESampler(seed=spec.seed)


class Study:
    """An Optuna study asked in batches: ``ask`` gives the next batch's trials (numbered and
    given ids as any search's), ``tell`` takes their results in that order."""

    def __init__(self, spec: Spec, fingerprint: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.fingerprint = spec, fingerprint
        self.study = optuna.create_study(direction="minimize", sampler=sampler(spec))
        self.space = distributions(spec)
        self.asked = 0
        self.seen: dict[str, int] = {}  # trial ids' repeat counts (make_trials)
        self.pending: list[Any] = []

    def ask(self, count: int) -> list[TrialConfig]:
        self.pending = [self.study.ask(self.space) for _ in range(count)]
        configs = [dict(t.params) for t in self.pending]
        search = self.spec.search
        trials = make_trials(configs, self.spec.family.key, self.fingerprint, search.cv,
                             self.spec.seed, first=self.asked, seen=self.seen)  # fmt: skip
        self.asked += count
        return trials

    def tell(self, results: list[TrialResult]) -> None:
        from optuna.trial import TrialState

        for trial, result in zip(self.pending, results, strict=True):
            if result.status == "completed":
                self.study.tell(trial, result.loss)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        self.pending = []


def first_batch(spec: Spec, fingerprint: str) -> tuple[list[TrialConfig], str]:
    """The first batch's trials (what ``prepare`` plans and may start early) and the key of
    the search's settings for its id (without ``n_trials``: extending a search keeps its id)."""
    study = Study(spec, fingerprint)
    trials = study.ask(min(spec.search.batch_size, spec.search.n_trials or 1))
    space = {k: repr(v) for k, v in study.space.items()}
    sampler = (
        "" if spec.search.sampler == "tpe" else f"{spec.search.sampler}:"
    )  # tpe: ids as before
    return trials, f"tpe:{sampler}{spec.search.batch_size}:{sorted(space.items())}"


def param_importances(spec: Spec, results: list[TrialResult]) -> dict[str, float] | None:
    """How much of the CV score's variance across the completed trials each parameter explains:
    Optuna's fANOVA (``optuna.importance.get_param_importances``, its default evaluator,
    seeded by the spec), largest first and summing to 1; None with fewer than two completed
    trials or nothing that varies."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [r for r in results if r.status == "completed"]
    space = distributions(spec)
    varied = [k for k, d in space.items() if not d.single()]
    if len(done) < 2 or not varied or len({r.mean_score for r in done}) < 2:
        return None
    study = optuna.create_study(direction="minimize")
    study.add_trials(
        optuna.trial.create_trial(
            params={k: r.params[k] for k in space},
            distributions=space,
            value=r.mean_score,
        )
        for r in done
    )
    evaluator = FanovaImportanceEvaluator(seed=spec.seed)
    found = get_param_importances(study, evaluator=evaluator, params=varied, normalize=True)
    return {name: float(value) for name, value in found.items()}


class Batches:
    """TPE as ``stepwise`` steps: ``batch_size`` configs asked at a time (``plan`` holds the
    first batch), told their results in the order asked, until ``n_trials``."""

    label = "batch"

    def __init__(self, spec: Spec, plan: Prepared) -> None:
        self.spec = spec
        self.study = Study(spec, plan.dataset.fingerprint)
        self.total = spec.search.n_trials or 0
        self.number = 0

    def next(self) -> Step | None:
        asked = self.study.asked
        if asked == self.total:
            return None
        trials = self.study.ask(min(self.spec.search.batch_size, self.total - asked))
        self.number += 1
        return Step(self.number - 1, trials)

    def tell(self, results: list[TrialResult]) -> None:
        self.study.tell(results)
