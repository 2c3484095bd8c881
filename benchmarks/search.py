"""Benchmarks of the search strategies: successive halving against scikit-learn's
HalvingGridSearchCV(n_jobs=-1), back to back on the same machine; and the time the TPE sampler
adds per trial as a search grows to 1,000 trials.

The default grid (less n_estimators, the resource) on the bundled Boston data, resource
n_estimators up to 200 (the default grid's largest), factor 3, min_resources "exhaust"
(scikit-learn's default for grids): 27 candidates at 7 trees, 9 at 21, 3 at 63, 1 at 189.

(a) HalvingGridSearchCV on the same training split, refit included;
(b) `mlpipe train --fresh --quiet` end to end (tracking, registry, artifacts), in a project
    warmed by one untimed run (its PREFECT_HOME and MLflow store exist).

Prints both wall times, the ratio b/a, mlpipe's phases, whether every rung's candidates, scores
and the best equal scikit-learn's, and the trees each fits (mlpipe's survivors grow the forests
of their earlier rung: ``trial.Warm``) against GridSearchCV over the full default grid (81
configs, n_estimators 50/100/200, 3 folds).

TPE's overhead: mlpipe's batched study (``tune.tpe.Study``: Optuna's TPESampler, batches of 4,
trial ids included) asked and told 1,000 trials over five XGBoost parameters (three on a log
scale), the score a cheap function of the params: the milliseconds per trial around trial 100,
500 and 1,000 (target: below 20 ms at 1,000).

TPE against random: XGBoost over five parameters (learning_rate and min_child_weight on a log
scale, max_depth, subsample, colsample_bytree; 100 rounds) on the diabetes data, 3-fold CV, five
seeds. For each seed, mlpipe's TPE study (batches of 4) evaluates 40 trials and its random search
120, with mlpipe's own trial code in one process (the flow tries the same configs whatever runs
them: tests/integration/test_tune.py); printed: the best CV MSE so far every 10 trials, and the
median over the seeds of TPE's best after 40 against random's after 120.

Usage: python benchmarks/search.py [halving] [tpe-overhead] [tpe-vs-random]   (default: all)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tune import _key, mlpipe_train

SEED = 42
SPEC: dict[str, Any] = {
    "seed": SEED,
    "search": {
        "strategy": "halving",
        "resource": "n_estimators",
        "max_resources": 200,
        "factor": 3,
        "params": {
            "max_depth": [None, 10, 20],
            "min_samples_split": [2, 5, 10],
            "min_samples_leaf": [1, 2, 4],
        },
    },
}


def halving_grid_search() -> tuple[float, Any]:
    """(a): seconds and the fitted search."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    from mlpipe.spec import Spec
    from mlpipe.tune.plan import prepare

    spec = Spec.model_validate(SPEC)
    split = prepare(spec).split
    started = time.perf_counter()
    search = HalvingGridSearchCV(
        RandomForestRegressor(random_state=SEED), SPEC["search"]["params"], factor=3, cv=3,
        resource="n_estimators", max_resources=200, scoring="neg_mean_squared_error",
        random_state=SEED, n_jobs=-1,
    ).fit(split.X_train, split.y_train)  # fmt: skip
    return time.perf_counter() - started, search


def tpe_overhead(trials: int = 1000, batch: int = 4) -> dict[int, float]:
    """Milliseconds the sampler takes per trial, averaged over the batches up to each hundred."""
    from mlpipe.spec import Spec
    from mlpipe.trial import TrialResult
    from mlpipe.tune.tpe import Study

    log = {"log": True}
    space = {
        "learning_rate": {"low": 0.01, "high": 0.3, **log},
        "min_child_weight": {"low": 0.1, "high": 10.0, **log},
        "reg_lambda": {"low": 1e-3, "high": 10.0, **log},
        "max_depth": {"low": 2, "high": 10},
        "subsample": {"low": 0.5, "high": 1.0},
    }
    search = {"strategy": "tpe", "n_trials": trials, "batch_size": batch, "params": space}
    study = Study(Spec.model_validate({"model": {"family": "xgboost"}, "search": search}), "fp")
    seconds: dict[int, list[float]] = {}
    done = 0
    while done < trials:
        started = time.perf_counter()
        asked = study.ask(batch)
        study.tell([TrialResult(t.trial_id, t.index, t.params,
                                mean_score=sum(float(v) for v in t.params.values()))
                    for t in asked])  # fmt: skip
        done += batch
        seconds.setdefault(-(-done // 100) * 100, []).append(
            (time.perf_counter() - started) / batch
        )
    return {n: 1000 * sum(v) / len(v) for n, v in seconds.items()}


XGB_SPACE = {
    "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
    "min_child_weight": {"low": 0.1, "high": 20.0, "log": True},
    "max_depth": {"low": 2, "high": 8},
    "subsample": {"low": 0.5, "high": 1.0},
    "colsample_bytree": {"low": 0.4, "high": 1.0},
}


def best_so_far(strategy: str, seed: int, n_trials: int) -> list[float]:
    """The best mean CV MSE after each trial of one search (mlpipe's samplers and trial code)."""
    from mlpipe.data import load_dataset, split_dataset
    from mlpipe.models import get_family
    from mlpipe.search import Unit, expand, make_trials
    from mlpipe.spec import Spec
    from mlpipe.trial import cross_validate_unit, kfold
    from mlpipe.tune.tpe import Study

    search = {"strategy": strategy, "n_trials": n_trials, "params": XGB_SPACE}
    spec = Spec.model_validate(
        {"seed": seed, "data": {"source": "diabetes"}, "model": {"family": "xgboost"},
         "search": search}
    )  # fmt: skip
    split = split_dataset(load_dataset(spec.data, seed), spec.data.test_size, seed)
    X, y = split.train_arrays
    folds, family = kfold(len(y), spec.search.cv), get_family("xgboost")

    def evaluate(trials: list) -> list:
        return [
            cross_validate_unit(Unit((t,), "n_estimators", 100), family, X, y, folds, seed).results[
                0
            ]
            for t in trials
        ]

    scores: list[float] = []
    if strategy == "random":
        configs = expand(spec.search_space, "random", seed, n_trials)
        for result in evaluate(make_trials(configs, "xgboost", "fp", spec.search.cv, seed)):
            scores.append(result.mean_score)
    else:
        study = Study(spec, "fp")
        while len(scores) < n_trials:
            results = evaluate(study.ask(min(spec.search.batch_size, n_trials - len(scores))))
            study.tell(results)
            scores += [r.mean_score for r in results]
    return [min(scores[: i + 1]) for i in range(len(scores))]


def tpe_vs_random(seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
    import statistics

    tpe_best, random_best = [], []
    print("tpe vs random, XGBoost on diabetes: best CV MSE so far (every 10 trials)")
    for seed in seeds:
        tpe, rnd = best_so_far("tpe", seed, 40), best_so_far("random", seed, 120)
        tpe_best.append(tpe[-1])
        random_best.append(rnd[-1])
        print(f"  seed {seed} tpe:    " + " ".join(f"{v:7.1f}" for v in tpe[9::10]))
        print(f"  seed {seed} random: " + " ".join(f"{v:7.1f}" for v in rnd[9::10]), flush=True)
    a, b = statistics.median(tpe_best), statistics.median(random_best)
    verdict = "tpe at least as good" if a <= b else "random better"
    print(f"  median best: tpe after 40 trials {a:.2f}, random after 120 {b:.2f} "
          f"({verdict}; target: tpe <= random)")  # fmt: skip


def main() -> None:
    parts = sys.argv[1:] or ["halving", "tpe-overhead", "tpe-vs-random"]
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
    if "tpe-overhead" in parts:
        per_trial = tpe_overhead()
        print("tpe, ms the sampler adds per trial (batches of 4, 5 parameters):")
        print(
            "  " + "  ".join(f"trials {n - 99}-{n}: {per_trial[n]:.1f}" for n in (100, 500, 1000))
        )
        print(f"  at 1,000 trials: {per_trial[1000]:.1f} ms (target < 20)")
    if "tpe-vs-random" in parts:
        tpe_vs_random()
    if "halving" in parts:
        halving()


def halving() -> None:
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder) / "project"
        print("  warming the project (one untimed run) ...", flush=True)
        mlpipe_train({"search": {"params": {"n_estimators": [5]}}}, project, project / "prefect")
        a, search = halving_grid_search()
        b, found, best, phases = mlpipe_train(SPEC, project, project / "prefect")
    results = search.cv_results_
    expected = {
        _key({k: v.item() if hasattr(v, "item") else v for k, v in params.items()}): -score
        for params, score in zip(results["params"], results["mean_test_score"], strict=True)
    }
    worst = max(
        abs(found[key] - value) / abs(value) for key, value in expected.items() if key in found
    )
    exact = set(found) == set(expected) and worst < 1e-9 and best == search.best_params_
    rungs = list(zip(search.n_candidates_, search.n_resources_, strict=True))
    trees = sum(c * r for c, r in rungs) * 3
    # mlpipe's survivors grow the forests of their earlier rung: only the new trees are fitted
    grown = sum(c * (r - (rungs[i - 1][1] if i else 0)) for i, (c, r) in enumerate(rungs)) * 3
    grid_trees = 27 * (50 + 100 + 200) * 3
    print(f"halving, Boston, resource n_estimators: rungs {search.n_candidates_} candidates at "
          f"{search.n_resources_} trees")  # fmt: skip
    print(f"  (a) HalvingGridSearchCV(n_jobs=-1) {a:7.1f} s")
    print(f"  (b) mlpipe train                   {b:7.1f} s   ratio b/a = {b / a:.2f}  "
          "(target <= 0.6)")  # fmt: skip
    print("      phases: " + "  ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    print(f"      exact: {'yes' if exact else 'NO'} (largest relative difference {worst:.1e}; "
          f"best {best})")  # fmt: skip
    print(f"  trees fitted: HalvingGridSearchCV {trees:,}, mlpipe at most {grown:,} (survivors "
          f"grow their earlier forests), GridSearchCV {grid_trees:,} on the default grid "
          f"({trees / grid_trees:.3f}, {grown / grid_trees:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
