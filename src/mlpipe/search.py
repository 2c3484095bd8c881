"""What to try: expand a search space into configs, give each a stable id, group them into units
of work, and pick the best result. Pure: no Prefect, no MLflow.

Roles, as in Ray Tune: ``expand`` decides what to try, ``trial.cross_validate_unit`` runs it,
``select_best`` judges. Only ``tune/trials.py`` knows how units are fanned out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlpipe.models import Family


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space. ``index`` is its place in scikit-learn's grid order."""

    trial_id: str
    index: int
    params: dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One step of a search whose later trials depend on earlier results (a halving rung, a
    batch asked of a sampler): its trials, the folds they use (None: the search's), and the
    fields set on each of their results (``TrialResult``'s rung and resources)."""

    number: int
    trials: list[TrialConfig]
    folds: list[Any] | None = None
    marks: dict[str, Any] | None = None


@dataclass(frozen=True)
class Unit:
    """Trials that differ only in ensemble size: one fit of the largest scores them all."""

    trials: tuple[TrialConfig, ...]
    size_param: str
    default_size: int

    def size_of(self, trial: TrialConfig) -> int:
        return int(trial.params.get(self.size_param, self.default_size))

    @property
    def sizes(self) -> list[int]:
        return [self.size_of(t) for t in self.trials]

    @property
    def largest_params(self) -> dict[str, Any]:
        """The params of the one fit this unit makes."""
        return {**self.trials[-1].params, self.size_param: max(self.sizes)}

    @property
    def cost(self) -> float:
        """Expected relative cost of the unit's one fit: per tree, a fixed part plus the growth
        of the tree, which shrinks with larger leaves and splits and with a depth cap.

        Calibrated on the reference workload (tests/unit/test_search.py holds the measurements:
        27 units of 200 trees, 3 folds, one core): a tree's fixed cost dominates on small
        tables, and growth adds up to 40% for fully grown trees."""
        params = self.trials[-1].params
        depth = params.get("max_depth")
        depth_factor = 1.0 if depth is None else min(1.0, float(depth) / 15.0)
        leaf = max(float(params.get("min_samples_leaf", 1) or 1), 1.0)
        split = max(float(params.get("min_samples_split", 2) or 2), 2.0)
        growth = depth_factor / (leaf * (split / 2.0) ** 0.5)
        return max(self.sizes) * (1.0 + 0.4 * growth)


class RangeLike(Protocol):
    """A parameter's range (``spec.Range``): both ends included."""

    @property
    def low(self) -> int | float: ...

    @property
    def high(self) -> int | float: ...

    @property
    def log(self) -> bool: ...

    @property
    def kind(self) -> str: ...  # "int" | "float"


def expand(
    space: Mapping[str, Sequence[Any] | RangeLike],
    strategy: str,
    seed: int,
    n_trials: int | None = None,
) -> list[dict[str, Any]]:
    """The configs to try, in scikit-learn's order: ParameterGrid, or a seeded ParameterSampler
    (RandomizedSearchCV's own sampler). Lists only: ``n_trials`` distinct grid points at most.
    With ranges, each draw takes every parameter in name order (a list: a uniform choice; a
    range: its scipy distribution, ``distribution``), with replacement, as RandomizedSearchCV
    draws with the same seed."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    if strategy == "grid":
        return [dict(p) for p in ParameterGrid(space)]
    if strategy == "random":
        if n_trials is None:
            raise ValueError("random search needs n_trials")
        lists = {k: v for k, v in space.items() if not hasattr(v, "low")}
        if len(lists) == len(space):
            n_trials = min(n_trials, len(ParameterGrid(lists)))
        sampled = {k: v if k in lists else distribution(v) for k, v in space.items()}  # type: ignore[arg-type]
        return [
            {k: _plain(v) for k, v in p.items()}
            for p in ParameterSampler(sampled, n_iter=n_trials, random_state=seed)
        ]
    raise ValueError(f"unknown search strategy {strategy!r}")


def distribution(bounds: RangeLike) -> Any:
    """The scipy distribution of a range, both ends included: ``randint(low, high + 1)``,
    ``uniform(low, high - low)``, ``loguniform(low, high)``; an int range on a log scale draws
    ``loguniform(low, high + 1)`` and rounds down."""
    from scipy import stats

    low, high = bounds.low, bounds.high
    if bounds.kind == "int":
        if bounds.log:
            return _FlooredLogUniform(int(low), int(high))
        return stats.randint(int(low), int(high) + 1)
    if bounds.log:
        return stats.loguniform(float(low), float(high))
    return stats.uniform(float(low), float(high) - float(low))


class _FlooredLogUniform:
    """Whole numbers from ``low`` to ``high``, even on a log scale."""

    def __init__(self, low: int, high: int) -> None:
        from scipy import stats

        self.low, self.high = low, high
        self.continuous = stats.loguniform(low, high + 1)

    def rvs(self, random_state: Any = None) -> int:
        drawn = int(self.continuous.rvs(random_state=random_state))
        return min(max(drawn, self.low), self.high)


def _plain(value: Any) -> Any:
    """numpy's scalars as Python's (JSON, MLflow params, trial ids); the value is the same."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


@dataclass(frozen=True)
class HalvingSchedule:
    """Successive halving's rungs, as scikit-learn's ``BaseSuccessiveHalving._run_search`` lays
    them out: the resources of each rung and how many candidates it evaluates."""

    resources: list[int]
    candidates: list[int]
    required_iterations: int
    possible_iterations: int


def halving_schedule(
    n_candidates: int,
    factor: int,
    smallest: int,
    max_resources: int,
    min_resources: int | str = "exhaust",
    aggressive: bool = False,
) -> HalvingSchedule:
    """The rungs for ``n_candidates``: ``smallest`` is scikit-learn's "smallest" minimum (2 x
    the folds for n_samples, else 1); "exhaust" raises it so the last rung gets as close to
    ``max_resources`` as the candidates allow. Each rung keeps ceil(n / factor) candidates."""
    from math import ceil, floor, log

    required = 1 + floor(log(n_candidates, factor))
    low = smallest if isinstance(min_resources, str) else min_resources
    if min_resources == "exhaust":
        low = max(low, max_resources // factor ** (required - 1))
    possible = 1 + floor(log(max_resources // low, factor))
    iterations = required if aggressive else min(possible, required)
    resources, counts, n = [], [], n_candidates
    for itr in range(iterations):
        power = max(0, itr - required + possible) if aggressive else itr
        resources.append(min(int(factor**power * low), max_resources))
        counts.append(n)
        n = ceil(n / factor)
    return HalvingSchedule(resources, counts, required, possible)


def top_k(losses: Sequence[float], k: int) -> list[int]:
    """The positions of the ``k`` best (lowest) mean CV losses of a rung, in the order
    scikit-learn's ``_top_k`` hands them to the next rung: worst kept first, a failed (NaN)
    candidate last to be kept. It sorts the negated scores with numpy's default argsort, so ties
    fall exactly as they do there."""
    import numpy as np

    scores = -np.asarray(losses, dtype=np.float64)
    order = np.roll(np.argsort(scores), np.count_nonzero(np.isnan(scores)))
    return [int(i) for i in order[-k:]]


def _digest(payload: Any, length: int = 12) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def make_trial_id(
    family: str, params: dict[str, Any], data_fingerprint: str, cv: int, seed: int
) -> str:
    """A stable hash of what decides a trial's result, so a rerun recognises finished trials."""
    return _digest(
        {"family": family, "params": params, "data": data_fingerprint, "cv": cv, "seed": seed}
    )


def make_search_id(family: str, trial_ids: Iterable[str], data_fingerprint: str, cv: int) -> str:
    """A stable hash of the whole search: the same spec on the same data gives the same id."""
    return _digest(
        {"family": family, "trials": sorted(trial_ids), "data": data_fingerprint, "cv": cv}, 10
    )


def make_trials(
    configs: Sequence[dict[str, Any]],
    family: str,
    data_fingerprint: str,
    cv: int,
    seed: int,
    first: int = 0,
    seen: dict[str, int] | None = None,
) -> list[TrialConfig]:
    """Number the configs (from ``first``) and give each its id. A config drawn again (random
    search draws with replacement, as RandomizedSearchCV does) is a trial of its own: its id
    counts the repeat (``seen``: the counts so far, for a search made in batches)."""
    trials: list[TrialConfig] = []
    seen = {} if seen is None else seen
    for index, params in enumerate(configs, start=first):
        base = make_trial_id(family, params, data_fingerprint, cv, seed)
        repeat = seen[base] = seen.get(base, -1) + 1
        trial_id = base if repeat == 0 else _digest({"trial": base, "repeat": repeat})
        trials.append(TrialConfig(trial_id, index, dict(params)))
    return trials


def plan_units(trials: Sequence[TrialConfig], family: Family) -> list[Unit]:
    """Group trials that fit the same model but for the size parameter (the params as the
    family will fit them: ``Family.effective``); costliest unit first.

    Longest-first scheduling keeps the pool busy to the end instead of waiting on one big fit
    started last.
    """
    size, default = family.size_param, family.default_size
    groups: dict[str, list[TrialConfig]] = {}
    for trial in trials:
        groups.setdefault(_digest(_fitted_without(family, trial.params, size)), []).append(trial)
    units = [
        Unit(tuple(sorted(group, key=lambda t: int(t.params.get(size, default)))), size, default)
        for group in groups.values()
    ]
    return sorted(units, key=lambda u: u.cost, reverse=True)


def depth_references(units: Sequence[Unit], family: Family) -> list[int | None]:
    """For each unit, the index of the unit that fits the same model but for a looser depth cap
    (the loosest of them; no cap is loosest), or None: that unit's fit, where its trees stay
    shallower than this unit's cap, is this unit's fit too (``trial.cross_validate_unit``).

    A cap that is never reached never changes a tree: every node is split, or not, exactly as
    without it, with the same random draws. Families that cannot say how deep a model grew
    (``Family.depth_of`` None) have no references.
    """
    param = family.depth_param
    if param is None or family.depth_of is None:
        return [None] * len(units)
    groups: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        params = unit.largest_params
        cap = params.get(param)
        if cap is None or (isinstance(cap, int) and not isinstance(cap, bool)):
            rest = _fitted_without(family, params, unit.size_param, param)
            groups.setdefault(_digest(rest), []).append(i)
    references: list[int | None] = [None] * len(units)
    for members in groups.values():
        loosest = max(members, key=lambda i: _looseness(units[i].largest_params.get(param)))
        for i in members:
            if i != loosest:
                references[i] = loosest
    return references


def dependents(references: Sequence[int | None]) -> dict[int, list[int]]:
    """``depth_references`` turned around: for a unit's index, the units waiting for its fit."""
    waiting: dict[int, list[int]] = {}
    for i, reference in enumerate(references):
        if reference is not None:
            waiting.setdefault(reference, []).append(i)
    return waiting


def _looseness(cap: int | None) -> float:
    return float("inf") if cap is None else float(cap)


def _fitted_without(family: Family, params: dict[str, Any], *names: str) -> dict[str, Any]:
    """The params as ``family`` will fit them, less ``names``."""
    return {k: v for k, v in family.effective(params).items() if k not in names}


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (from 0) of ``count`` parts of a search, as ``--shard INDEX/COUNT`` names
    it and a Kubernetes Indexed Job numbers its pods (JOB_COMPLETION_INDEX)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 0 <= I < N; raises ValueError with what was wrong."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4")
        shard = cls(int(index), int(count))
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise ValueError(
                f"--shard {text}: the index must be 0..{max(shard.count - 1, 0)} "
                "(numbered from 0, as JOB_COMPLETION_INDEX is)"
            )
        return shard


def assign_shards(units: Sequence[Unit], count: int) -> list[list[Unit]]:
    """Split units into ``count`` shards of near-equal expected cost (not count).

    Costliest unit first, each to the shard with the least cost so far (LPT); then, while it
    helps, move a unit from the costliest shard to the cheapest or swap a pair between them (LPT
    alone leaves a whole unit of difference: 7% on the reference grid at 2 shards, 1% after).
    Deterministic (ties go by grid order, whatever the input order): every process that plans
    the same search gets the same shards, so no coordinator is needed. Each shard stays costliest
    unit first.
    """
    shards: list[list[Unit]] = [[] for _ in range(count)]
    for unit in sorted(units, key=lambda u: (-u.cost, u.trials[0].index)):
        min(shards, key=_load).append(unit)  # ties: the lowest index
    for _ in range(len(units) * count):
        heavy, light = max(shards, key=_load), min(shards, key=_load)
        gap = _load(heavy) - _load(light)
        options = [(u, None) for u in heavy] + [(u, v) for u in heavy for v in light]
        best = min(options, key=lambda o: abs(gap - 2 * _delta(*o)), default=None)
        if best is None or abs(gap - 2 * _delta(*best)) >= gap - 1e-9:
            break
        unit, other = best
        heavy.remove(unit)
        light.append(unit)
        if other is not None:
            light.remove(other)
            heavy.append(other)
    return [sorted(shard, key=lambda u: (-u.cost, u.trials[0].index)) for shard in shards]


def _load(shard: list[Unit]) -> float:
    return sum(u.cost for u in shard)


def _delta(unit: Unit, other: Unit | None) -> float:
    """The cost a move (``other`` None) or a swap takes off the heavier shard."""
    return unit.cost - (other.cost if other is not None else 0.0)


def ranked(results: Sequence[Any]) -> list[Any]:
    """The completed results, best first: lowest mean loss (``TrialResult.loss``), ties to the
    earlier config in grid order, as ``GridSearchCV`` breaks them."""
    # a NaN score (a metric scikit-learn refused on some fold) ranks last, as in cv_results_
    return sorted(
        (r for r in results if r.status == "completed"),
        key=lambda r: (math.isnan(r.loss), 0.0 if math.isnan(r.loss) else r.loss, r.index),
    )


def select_best(results: Sequence[Any]) -> Any:
    """The best completed result (``ranked``'s first); None if nothing completed. In a halving
    search, the best of the last rung, as scikit-learn picks it."""
    rungs = [r.rung for r in results if getattr(r, "rung", None) is not None]
    if rungs:
        results = [r for r in results if r.rung == max(rungs)]
    done = ranked(results)
    return done[0] if done else None
