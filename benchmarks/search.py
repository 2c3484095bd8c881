"""Benchmark: successive halving, scikit-learn's HalvingGridSearchCV(n_jobs=-1) against `mlpipe
train` with `search.strategy: halving`, back to back on the same machine.

The default grid (less n_estimators, the resource) on the bundled Boston data, resource
n_estimators up to 200 (the default grid's largest), factor 3, min_resources "exhaust"
(scikit-learn's default for grids): 27 candidates at 7 trees, 9 at 21, 3 at 63, 1 at 189.

(a) HalvingGridSearchCV on the same training split, refit included;
(b) `mlpipe train --fresh --quiet` end to end (tracking, registry, artifacts), in a project
    warmed by one untimed run (its PREFECT_HOME and MLflow store exist).

Prints both wall times, the ratio b/a, mlpipe's phases, whether every rung's candidates, scores
and the best equal scikit-learn's, and the trees fitted against GridSearchCV over the full
default grid (81 configs, n_estimators 50/100/200, 3 folds). Usage: python benchmarks/search.py
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
    from mlpipe.tune.steps import prepare

    spec = Spec.model_validate(SPEC)
    split = prepare(spec).split
    started = time.perf_counter()
    search = HalvingGridSearchCV(
        RandomForestRegressor(random_state=SEED), SPEC["search"]["params"], factor=3, cv=3,
        resource="n_estimators", max_resources=200, scoring="neg_mean_squared_error",
        random_state=SEED, n_jobs=-1,
    ).fit(split.X_train, split.y_train)  # fmt: skip
    return time.perf_counter() - started, search


def main() -> None:
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
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
    trees = sum(c * r for c, r in zip(search.n_candidates_, search.n_resources_, strict=True)) * 3
    grid_trees = 27 * (50 + 100 + 200) * 3
    print(f"halving, Boston, resource n_estimators: rungs {search.n_candidates_} candidates at "
          f"{search.n_resources_} trees")  # fmt: skip
    print(f"  (a) HalvingGridSearchCV(n_jobs=-1) {a:7.1f} s")
    print(f"  (b) mlpipe train                   {b:7.1f} s   ratio b/a = {b / a:.2f}  "
          "(target <= 0.6)")  # fmt: skip
    print("      phases: " + "  ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    print(f"      exact: {'yes' if exact else 'NO'} (largest relative difference {worst:.1e}; "
          f"best {best})")  # fmt: skip
    print(f"  trees fitted: {trees:,} against GridSearchCV's {grid_trees:,} on the default grid "
          f"({trees / grid_trees:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
