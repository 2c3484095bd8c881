"""Benchmark: scikit-learn GridSearchCV(n_jobs=-1) against `mlpipe train`, one after the other.

(a) GridSearchCV over the default grid on the default data and split, refit included.
(b) `mlpipe train` end to end in a fresh folder (new PREFECT_HOME, new MLflow SQLite store):
    imports, Prefect ephemeral server, MLflow store set-up, 81 trials tracked as nested runs,
    refit, registration, alias, artifacts and report. Its cold start is shown apart.

Prints both wall times and the ratio b/a. Usage: python benchmarks/tune.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def grid_search_seconds() -> tuple[float, dict]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import GridSearchCV

    from mlpipe.data import load_dataset, split_dataset
    from mlpipe.spec import load_spec

    spec = load_spec()
    split = split_dataset(load_dataset(spec.data, spec.seed), spec.data.test_size, spec.seed)
    started = time.perf_counter()
    search = GridSearchCV(
        RandomForestRegressor(random_state=spec.seed),
        spec.search_space,
        cv=spec.search.cv,
        scoring="neg_mean_squared_error",
        n_jobs=-1,
    )
    search.fit(split.X_train, split.y_train)
    return time.perf_counter() - started, search.best_params_


def mlpipe_train_seconds() -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "PREFECT_HOME": str(Path(folder) / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        mlpipe = Path(sys.executable).with_name("mlpipe")
        started = time.perf_counter()
        done = subprocess.run(
            [str(mlpipe), "train", "--quiet"],
            cwd=folder,
            env=env,
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        wall = time.perf_counter() - started
        [results] = Path(folder, "artifacts").glob("*/tuning_results.json")
        best = json.loads(results.read_text())["best"]["params"]
        return wall, {"best": best, "timings": _parse_timings(done.stdout)}


def _parse_timings(summary: str) -> dict[str, float]:
    """The `timings: name 1.2s ...` line of mlpipe's summary, as a dict."""
    line = next((ln for ln in summary.splitlines() if ln.startswith("timings:")), "timings:")
    words = line.split()[1:]
    return {
        name: float(value.rstrip("s")) for name, value in zip(words[::2], words[1::2], strict=False)
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate (a) and (b) this many times"
    )
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}")
    for round_ in range(1, args.repeat + 1):
        a, a_best = grid_search_seconds()
        print(f"[{round_}] (a) GridSearchCV(n_jobs=-1): {a:.1f} s  best {a_best}")
        b, info = mlpipe_train_seconds()
        t = info["timings"]
        cold = t.get("process_start", 0.0) + t.get("cold_start", 0.0)
        print(f"[{round_}] (b) mlpipe train:           {b:.1f} s  best {info['best']}")
        print(
            f"      of which cold start {cold:.1f} s (imports {t.get('process_start', 0):.1f} s, "
            f"Prefect server + MLflow store {t.get('cold_start', 0):.1f} s); "
            f"warm part {b - cold:.1f} s"
        )
        print("      phases: " + "  ".join(f"{k} {v:.1f}s" for k, v in t.items()))
        print(f"[{round_}] ratio b/a = {b / a:.2f}   (warm part / a = {(b - cold) / a:.2f})")


if __name__ == "__main__":
    main()
