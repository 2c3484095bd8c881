"""Benchmark: scikit-learn's GridSearchCV(n_jobs=-1) against `mlpipe train`, workload by workload.

Each row runs, one after the other on the same machine:
(a) GridSearchCV over the workload's grid on the same split, refit included, scored as mlpipe
    scores it (`neg_mean_squared_error`; `neg_log_loss` for the classification workload: its
    `-mean_test_score` is the CV MSE or log loss mlpipe reports);
(b) `mlpipe train --fresh --quiet` end to end: imports, Prefect's ephemeral server, the MLflow
    store, every trial tracked as a nested run, refit, registration, alias, artifacts, report;
    "warm" reruns in a project folder (its PREFECT_HOME and MLflow store) that a first, untimed
    run of a one-config search set up; "cold" starts from a new folder and a new PREFECT_HOME
    (what `make run` meets);
(c) the floor: the same units mlpipe plans, in a bare process pool of the same size (no Prefect,
    no MLflow, no files): what the machine needs for the model work alone.

Prints the three wall times, the ratio b/a, mlpipe's phases and whether every trial's CV score
and the best configuration equal GridSearchCV's. Usage:

    python benchmarks/tune.py                      # every workload but synthetic-8000
    python benchmarks/tune.py boston-warm xgboost  # some of them
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import categorical_table

BIN = Path(sys.executable).parent
XGB_GRID = {"n_estimators": [100, 200, 400], "max_depth": [3, 6], "learning_rate": [0.05, 0.1, 0.3]}


@dataclass(frozen=True)
class Workload:
    spec: dict[str, Any] = field(default_factory=dict)  # the spec file's content
    cold: bool = False
    table: int | None = None  # rows of a table with categories, written for the run


def synthetic(rows: int, **spec: Any) -> dict[str, Any]:
    return {"data": {"source": "synthetic", "rows": rows, "features": 20}, **spec}


WORKLOADS = {
    "boston-warm": Workload(),
    "boston-cold": Workload(cold=True),
    "synthetic-2000": Workload(synthetic(2000)),
    "synthetic-8000": Workload(synthetic(8000)),
    "xgboost": Workload(synthetic(2000, model={"family": "xgboost"}, search={"params": XGB_GRID})),
    # the default forest grid on a table with categories (one-hot inside each fold)
    "categorical-2000": Workload(table=2000),
    "categorical-8000": Workload(table=8000),
    # RandomForestClassifier on breast_cancer (455 training rows, 2 classes), the default grid
    "breast-cancer": Workload(
        {"data": {"source": "breast_cancer"}, "model": {"task": "classification"}}
    ),
}
# 8000 rows: ~18 min alone
DEFAULT = [name for name in WORKLOADS if name not in ("synthetic-8000", "categorical-8000")]


def load(spec_dict: dict[str, Any]) -> tuple[Any, Any]:
    """The validated spec and its prepared search (data, split, folds, trials)."""
    from mlpipe.spec import Spec
    from mlpipe.tune.plan import prepare

    spec = Spec.model_validate(spec_dict)
    return spec, prepare(spec)


def grid_search(spec: Any, plan: Any) -> tuple[float, dict[str, float], dict[str, Any]]:
    """(a): seconds, the CV score of each config (by its params as JSON) and the best params."""
    from sklearn.model_selection import GridSearchCV

    from mlpipe.scoring import get_scoring

    family, scoring = spec.family, get_scoring(spec.scoring)
    y = plan.split.y_train
    if family.task == "classification" and family.any_labels:
        y = plan.dataset.decode(y)  # the labels, as a user hands them to scikit-learn
    estimator, prefix = family.build({}, spec.seed), ""
    if plan.split.frame:  # the documented pipeline: cast, encode, estimate (README)
        from mlpipe.columns import encoder, make_pipeline

        encoding = encoder(
            family.name, plan.dataset.columns, plan.split.X_train, family.task, spec.seed
        )
        estimator = make_pipeline(
            plan.dataset.columns, encoding, family.build(encoding.model_params, spec.seed)
        )
        prefix = "model__"
    started = time.perf_counter()
    search = GridSearchCV(
        estimator,
        {prefix + k: v for k, v in spec.search_space.items()},
        cv=spec.search.cv,
        scoring=scoring.sklearn,
        n_jobs=spec.n_jobs,
    )
    search.fit(plan.split.X_train, y)
    seconds = time.perf_counter() - started
    sign = 1 if scoring.greater_is_better else -1
    scores = {
        _key({k.removeprefix(prefix): v for k, v in params.items()}): sign * score
        for params, score in zip(
            search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
        )
    }
    return seconds, scores, {k.removeprefix(prefix): v for k, v in search.best_params_.items()}


def mlpipe_train(
    spec: dict[str, Any], project: Path, prefect_home: Path
) -> tuple[float, dict[str, float], dict, dict]:
    """(b): seconds, each trial's CV score, the best params and the summary's phases."""
    project.mkdir(parents=True, exist_ok=True)
    (project / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
    }
    env.pop("PREFECT_API_URL", None)
    command = [str(BIN / "mlpipe"), "train", "--config", "spec.yaml", "--quiet", "--fresh"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    folder = next(ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("artifacts "))
    results = json.loads((project / folder / "tuning_results.json").read_text())
    scores = {_key(t["params"]): t["mean_score"] for t in results["trials"]}
    return seconds, scores, results["best"]["params"], _phases(done.stdout)


def bare_pool(spec: Any, plan: Any) -> float:
    """(c): the units mlpipe plans, depth references included, in a bare process pool."""
    from mlpipe.search import dependents, depth_references, plan_units
    from mlpipe.trial import cross_validate_unit

    family = spec.family
    X, y = plan.split.train_arrays
    units = plan_units(plan.trials, family)
    references = depth_references(units, family)
    waiting = dependents(references)
    started = time.perf_counter()
    workers = min(spec.n_jobs if spec.n_jobs > 0 else os.cpu_count() or 1, len(units))
    # spawn: a fork of this process, which runs GridSearchCV's loky threads, can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:

        def submit(i: int, folds: Any = None) -> Future:
            args = (units[i], family, X, y, plan.folds, spec.seed, folds)
            return pool.submit(cross_validate_unit, *args)

        pending = {submit(i): i for i, r in enumerate(references) if r is None}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                for j in waiting.get(i, []):
                    pending[submit(j, future.result().folds)] = j
    return time.perf_counter() - started


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _phases(summary: str) -> dict[str, float]:
    """The `timings: name 1.2s ...` line of mlpipe's summary, as a dict."""
    line = next((ln for ln in summary.splitlines() if ln.startswith("timings:")), "timings:")
    words = line.split()[1:]
    return {k: float(v.rstrip("s")) for k, v in zip(words[::2], words[1::2], strict=False)}


def run(name: str, workload: Workload, keep: Path) -> None:
    if workload.table is not None:
        path = categorical_table(workload.table, keep)
        workload = Workload({"data": {"source": str(path), "target": "price"}}, workload.cold)
    spec, plan = load(workload.spec)
    with tempfile.TemporaryDirectory() as cold:
        folder = Path(cold) if workload.cold else keep
        if not workload.cold:  # a project run before: its PREFECT_HOME and MLflow store exist
            print("  warming the project (one untimed run) ...", flush=True)
            warm_up = {**workload.spec, "search": {"params": {"n_estimators": [5]}}}
            mlpipe_train(warm_up, folder / name, folder / "prefect")
        a, expected, a_best = grid_search(spec, plan)
        b, found, b_best, phases = mlpipe_train(workload.spec, folder / name, folder / "prefect")
    c = bare_pool(spec, plan)
    worst = max(abs(found[k] - v) / abs(v) for k, v in expected.items() if k in found)
    exact = set(found) == set(expected) and worst < 1e-9 and b_best == a_best
    print(f"{name}: {len(expected)} configs, {len(plan.split.y_train)} training rows")
    print(f"  (a) GridSearchCV(n_jobs={spec.n_jobs}) {a:7.1f} s")
    print(f"  (b) mlpipe train            {b:7.1f} s   ratio b/a = {b / a:.2f}")
    print(f"  (c) bare process pool       {c:7.1f} s   (the same units, no orchestration)")
    print("      phases: " + "  ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    print(f"      exact: {'yes' if exact else 'NO'} (largest relative difference of a trial's "
          f"CV {spec.scoring} {worst:.1e}; best {b_best})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # checked here: argparse (3.11) checks an empty list against a "*" positional's choices
    parser.add_argument("workloads", nargs="*", help=f"any of {', '.join(WORKLOADS)}")
    args = parser.parse_args()
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as keep:
        for name in args.workloads or DEFAULT:
            run(name, WORKLOADS[name], Path(keep))


if __name__ == "__main__":
    main()
