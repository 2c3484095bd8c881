"""Planning a search: the data, its split and folds, the trials of a strategy's first step (the
grid, a random draw, halving's first rung, TPE's first batch) and the search id; and which
trials an earlier run of the same search finished. ``steps.py`` runs what is planned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.data import Dataset, Split, check_classes, load_dataset, split_dataset
from mlpipe.errors import DataError, UserError
from mlpipe.search import (
    TrialConfig,
    Unit,
    assign_shards,
    expand,
    make_search_id,
    make_trials,
    plan_units,
)
from mlpipe.spec import Spec
from mlpipe.trial import TrialResult, cv_folds
from mlpipe.tune import artifacts, halving, tpe


@dataclass(frozen=True)
class Prepared:
    """A search made concrete: data, split, folds, trials and their ids."""

    dataset: Dataset
    split: Split
    folds: list[tuple[np.ndarray, np.ndarray]]
    trials: list[TrialConfig]
    search_id: str

    def search_params(self, spec: Spec) -> dict[str, Any]:
        """What the parent run records about the search."""
        search = spec.search
        return (
            {
                "family": spec.model.family,
                "strategy": search.strategy,
                "cv": search.cv,
                "seed": spec.seed,
                "data": spec.data.source,
                "n_trials": search.n_trials if search.strategy == "tpe" else len(self.trials),
                "test_size": spec.data.test_size,
            }
            | self._task(spec)
            | self._strategy(spec)
            | self._left_out()
        )

    def _left_out(self) -> dict[str, Any]:
        # only a table that had some: searches of the tables before column kinds stay as logged
        columns, left = self.dataset.columns, dict[str, Any]()
        if self.dataset.dropped_rows:
            left["dropped_rows"] = self.dataset.dropped_rows
        if columns is not None and columns.identifiers:
            left["identifiers"] = ",".join(columns.identifiers)
        if columns is not None and columns.dropped:
            left["dropped_columns"] = ",".join(columns.dropped)
        return left

    @staticmethod
    def _task(spec: Spec) -> dict[str, Any]:
        # regression by MSE records nothing new: its searches stay the ones logged before tasks
        if spec.family.key == spec.model.family:
            return {}
        return {"task": spec.model.task, "scoring": spec.scoring}

    @staticmethod
    def _strategy(spec: Spec) -> dict[str, Any]:
        search = spec.search
        if search.strategy == "tpe":
            return {"batch_size": search.batch_size, "sampler": search.sampler or "tpe"}
        if search.strategy != "halving":
            return {}
        return {
            "candidates": search.candidates,
            "resource": search.resource,
            "factor": search.factor,
            "min_resources": search.first_resources,
            "max_resources": search.max_resources or "n_samples",
            "aggressive_elimination": search.aggressive_elimination,
        }

    @property
    def search_tags(self) -> dict[str, str]:
        return {
            "mlpipe.data_fingerprint": self.dataset.fingerprint,
            "mlpipe.data": self.dataset.name,
        }

    def shards(self, spec: Spec, count: int) -> list[list[Unit]]:
        """The search's units split into ``count`` shards (all trials, done or not, so every
        run of every shard agrees on who owns what)."""
        return assign_shards(plan_units(self.trials, spec.family), count)


def prepare(spec: Spec, search_id: str | None = None) -> Prepared:
    """Load and check the data and expand the search; raises UserError on bad input, or if the
    spec's search is not ``search_id``."""
    family = spec.family
    dataset = load_dataset(spec.data, spec.seed, spec.model.task)
    split = split_dataset(dataset, spec.data.test_size, spec.seed)
    n_train = len(split.y_train)
    if spec.search.cv > n_train:
        raise DataError(
            f"search.cv: {spec.search.cv} folds need at least {spec.search.cv} training rows; "
            f"{dataset.name} has {n_train} after the test split. Lower search.cv"
        )
    check_classes(dataset, split.y_train, spec.search.cv, spec.scoring)
    folds = cv_folds(split.y_train.to_numpy(), spec.search.cv, spec.model.task)
    if spec.search.strategy == "halving":
        trials, folds, key = halving.first_rung(
            spec, dataset.fingerprint, folds, n_train, halving.n_classes(dataset)
        )
        ids = [key, *(t.trial_id for t in trials)]
    elif spec.search.strategy == "tpe":  # the first batch; the id leaves n_trials out
        trials, key = tpe.first_batch(spec, dataset.fingerprint)
        ids = [key]
    else:
        configs = expand(spec.search_space, spec.search.strategy, spec.seed, spec.search.n_trials)
        trials = make_trials(configs, family.key, dataset.fingerprint, spec.search.cv, spec.seed)
        ids = [t.trial_id for t in trials]
    found_id = make_search_id(family.key, ids, dataset.fingerprint, spec.search.cv)
    if search_id is not None and search_id != found_id:
        raise UserError(
            f"--finalize {search_id}: this spec and data give search {found_id}. Finalize with "
            "the same spec file and flags the shards ran with"
        )
    return Prepared(dataset, split, folds, trials, found_id)


def pending_trials(
    spec: Spec, plan: Prepared, fresh: bool
) -> tuple[list[TrialResult], list[TrialConfig]]:
    """The trials an earlier run of this search finished (in this run's grid order; none with
    ``fresh``), and the trials left to run."""
    out_dir = Path(spec.artifacts_dir) / plan.search_id
    previous = {} if fresh else artifacts.completed_trials(out_dir)
    reused = []
    for trial in plan.trials:
        if trial.trial_id in previous:
            reused.append(previous[trial.trial_id])
            reused[-1].index = trial.index  # grid order of this run decides ties
    return reused, [t for t in plan.trials if t.trial_id not in previous]
