"""Model-based search with Optuna's TPE sampler, reproducible at any parallelism.

Optuna's sampler asks ``batch_size`` configurations, the flow cross-validates them as tasks (the
same as any search's), and their mean CV MSE is told back in the order they were asked, never in
the order they finished. So the configurations tried depend on the seed, the space and
``batch_size`` only: one worker, two, or a Dask cluster try the same ones (Optuna's own parallel
``optimize`` does not: optuna#3056, #6062).

The study lives in the flow. It is rebuilt each run by asking again, batch by batch, with the
same seeded sampler: a batch whose trials MLflow already holds (finished in an interrupted or an
earlier, shorter run of this search) is told their logged scores instead of being computed, so a
resumed or extended search (a larger ``n_trials``) never recomputes a finished trial. The search
id leaves ``n_trials`` out for that reason.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mlpipe.search import TrialConfig, make_trials
from mlpipe.space import Range
from mlpipe.spec import Spec
from mlpipe.tracking import Tracker
from mlpipe.trial import TrialResult
from mlpipe.tune.progress import Observer

if TYPE_CHECKING:
    from mlpipe.tune.plan import Prepared
    from mlpipe.tune.steps import TuneOutcome


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


class Study:
    """An Optuna study asked in batches: ``ask`` gives the next batch's trials (numbered and
    given ids as any search's), ``tell`` takes their results in that order."""

    def __init__(self, spec: Spec, fingerprint: str) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec, self.fingerprint = spec, fingerprint
        self.study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=spec.seed)
        )
        self.space = distributions(spec)
        self.asked = 0
        self.seen: dict[str, int] = {}  # trial ids' repeat counts (make_trials)
        self.pending: list[Any] = []

    def ask(self, count: int) -> list[TrialConfig]:
        self.pending = [self.study.ask(self.space) for _ in range(count)]
        configs = [dict(t.params) for t in self.pending]
        search = self.spec.search
        trials = make_trials(configs, self.spec.model.family, self.fingerprint, search.cv,
                             self.spec.seed, first=self.asked, seen=self.seen)  # fmt: skip
        self.asked += count
        return trials

    def tell(self, results: list[TrialResult]) -> None:
        from optuna.trial import TrialState

        for trial, result in zip(self.pending, results, strict=True):
            if result.status == "completed":
                self.study.tell(trial, result.mean_score)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        self.pending = []


def first_batch(spec: Spec, fingerprint: str) -> tuple[list[TrialConfig], str]:
    """The first batch's trials (what ``prepare`` plans and may start early) and the key of
    the search's settings for its id (without ``n_trials``: extending a search keeps its id)."""
    study = Study(spec, fingerprint)
    trials = study.ask(min(spec.search.batch_size, spec.search.n_trials or 1))
    space = {k: repr(v) for k, v in study.space.items()}
    return trials, f"tpe:{spec.search.batch_size}:{sorted(space.items())}"


def run_search(
    spec: Spec, plan: Prepared, tracker: Tracker, fresh: bool, observer: Observer, started: float
) -> TuneOutcome:
    """Ask, evaluate and tell batch by batch until ``n_trials``; then ``steps.finish``."""
    from mlpipe.tune import rerun
    from mlpipe.tune.steps import MODEL_WRITERS, finish, preload, repeat
    from mlpipe.tune.trials import run_trials

    n_trials, batch = spec.search.n_trials or 0, spec.search.batch_size
    logged = {} if fresh else tracker.gather_trials(plan.search_id, None)
    previous = {tid: result for tid, (_, result) in logged.items() if result.status == "completed"}
    replayed = _replay(spec, plan, previous)
    if replayed is not None:  # every trial finished before: that search's outcome, if it ended
        params, name = plan.search_params(spec), spec.model_name
        earlier = rerun.find_earlier(tracker, plan.search_id, params, name)
        if earlier is not None:
            observer.start(total=n_trials, reused=n_trials)
            observer.finish()
            return repeat(spec, plan, tracker, earlier, replayed, started)
    parent_run_id = tracker.start_search(plan.search_id, plan.search_params(spec), plan.search_tags)
    study = Study(spec, plan.dataset.fingerprint)
    results: list[TrialResult] = []
    reused = 0
    observer.start(total=n_trials, reused=0)
    timings = {"prepare": time.perf_counter() - started}
    preload(MODEL_WRITERS[spec.model.family])
    while len(results) < n_trials:
        trials = study.ask(min(batch, n_trials - len(results)))
        done = []
        for trial in trials:
            if trial.trial_id in previous:
                found = previous[trial.trial_id]
                found.index = trial.index
                tracker.log_trial(parent_run_id, plan.search_id, found)
                done.append(found)
        todo = [t for t in trials if t.trial_id not in previous]
        fresh_results = run_trials(spec, plan, todo, tracker, parent_run_id, observer,
                                   results + done)  # fmt: skip
        by_id = {r.trial_id: r for r in done + fresh_results}
        batch_results = [by_id[t.trial_id] for t in trials]
        study.tell(batch_results)
        results += batch_results
        reused += len(done)
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]
    return finish(spec, plan, tracker, parent_run_id, results, reused, timings)


def _replay(
    spec: Spec, plan: Prepared, previous: dict[str, TrialResult]
) -> list[TrialResult] | None:
    """The whole search from earlier results alone, asked and told as a run would; None as
    soon as a trial it asks for was never finished."""
    study = Study(spec, plan.dataset.fingerprint)
    n_trials = spec.search.n_trials or 0
    results: list[TrialResult] = []
    while len(results) < n_trials:
        trials = study.ask(min(spec.search.batch_size, n_trials - len(results)))
        if any(t.trial_id not in previous for t in trials):
            return None
        batch = [previous[t.trial_id] for t in trials]
        for result, trial in zip(batch, trials, strict=True):
            result.index = trial.index
        study.tell(batch)
        results += batch
    return results
