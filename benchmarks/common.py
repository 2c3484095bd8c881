"""What the benchmarks share: a fresh folder with its own Prefect home and MLflow store, and the
reference model (the default tuning's best RandomForest, registered as boston-rf@champion)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
MODEL = "models:/boston-rf@champion"
DATA = Path(__file__).parents[1] / "src/mlpipe/data/boston.csv"


def environment(
    folder: str, tracking_uri: str | None, train: tuple[str, ...] = ()
) -> dict[str, str]:
    """The benchmark's environment: the venv's bin first on PATH (`mlflow models serve` runs
    uvicorn from there), a private PREFECT_HOME, and ``tracking_uri`` or a store in ``folder``
    where `mlpipe train` (with ``train``'s arguments) registered the model first."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PREFECT_HOME": str(Path(folder) / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{folder}/mlflow.db",
    }
    env.pop("PREFECT_API_URL", None)
    if not tracking_uri:
        print("training the default model (mlpipe train) ...", flush=True)
        subprocess.run([str(BIN / "mlpipe"), "train", "--quiet", *train], cwd=folder, env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return env


def jittered_boston(rng: Any, rows: int) -> Any:
    """``rows`` Boston rows drawn at random, the float columns scaled by U(0.95, 1.05) and the
    integer ones (CHAS, RAD, TAX) kept as they are: the table's own types, as the model's
    signature declares them."""
    import pandas as pd

    boston = pd.read_csv(DATA).drop(columns=["MEDV"])
    sample = boston.iloc[rng.integers(0, len(boston), rows)].reset_index(drop=True)
    floats = [c for c in sample.columns if sample[c].dtype.kind == "f"]
    sample[floats] = sample[floats] * rng.uniform(0.95, 1.05, (rows, len(floats)))
    return sample


def measure(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} failed with exit status {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def arguments(doc: str | None, rows: int, s3: bool = False) -> argparse.Namespace:
    """The scoring benchmarks' options: --rows and --tracking-uri (and --s3 if asked)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--tracking-uri", help="a store with boston-rf@champion (else: train)")
    if s3:
        parser.add_argument("--s3", action="store_true", help="also from and to S3 (local)")
    return parser.parse_args()


def report(
    rows: int,
    results: dict[str, tuple[float, float]],
    a: Any,
    b: Any,
    fixed: dict[str, float] | None = None,
) -> None:
    """Print both sides (seconds, rows/s, peak RSS; with ``fixed``, the peak RSS of the same
    command on a tiny input), the ratios against the targets (>= 3x rows/s, <= 1/5 memory), and
    whether the predictions ``a`` and ``b`` (frames of id, prediction) agree; exit 1 if not."""
    print(f"\n{rows:,} rows, {os.cpu_count()} cores, whole process each (imports included)")
    extra = f"{'of it, fixed':>14}" if fixed else ""
    print(f"{'side':<30}{'seconds':>9}{'rows/s':>12}{'peak RSS MiB':>14}{extra}")
    for name, (seconds, rss) in results.items():
        extra = f"{fixed[name]:>14.0f}" if fixed else ""
        print(f"{name:<30}{seconds:>9.1f}{rows / seconds:>12,.0f}{rss:>14.0f}{extra}")
    (sa, ra), (sb, rb) = results.values()
    print(f"rows/s ratio b/a: {sa / sb:.2f}  (target >= 3)")
    print(f"peak memory ratio b/a: {rb / ra:.3f}  (target <= 0.2)")
    if fixed:
        fa, fb = fixed.values()
        print(f"memory the rows cost (peak minus fixed), ratio b/a: {(rb - fb) / (ra - fa):.3f}")
    agree(rows, a, b)


def agree(rows: int, a: Any, b: Any) -> None:
    """Whether two sides' predictions (frames of id, prediction) agree; exit 1 if not."""
    import numpy as np

    a, b = a.sort_values("id"), b.sort_values("id")
    same_ids = len(a) == len(b) == rows and (a["id"].to_numpy() == b["id"].to_numpy()).all()
    diff = float(np.max(np.abs(a["prediction"].to_numpy() - b["prediction"].to_numpy())))
    print(f"same ids: {same_ids}; max |prediction difference|: {diff:.3g}")
    if not same_ids or diff > 1e-9:
        raise SystemExit("the two sides disagree")


def categorical_table(rows: int, path: Path) -> Path:
    """A third of 12 features categorical (strings; one with 300 categories, a zone id), empty
    cells in a few of them, and a target that depends on the categories and the numbers."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(8)})
    frame["city"] = rng.choice(["paris", "rome", "oslo", "lima", "kyiv", "quito"], rows)
    frame["kind"] = rng.choice(["flat", "house", "loft"], rows, p=[0.6, 0.3, 0.1])
    frame["heating"] = rng.choice(["gas", "oil", "heat pump", "wood"], rows).astype(object)
    frame["zone"] = [f"z{z:03d}" for z in rng.integers(0, 300, rows)]
    frame.loc[rng.random(rows) < 0.05, "heating"] = None
    frame.loc[rng.random(rows) < 0.05, "x3"] = np.nan
    effect = {"paris": 3.0, "rome": 2.0, "oslo": 1.0, "lima": 0.0, "kyiv": -1.0, "quito": -2.0}
    frame["price"] = (
        frame["city"].map(effect) + 2 * frame["x0"] + frame["x1"] * (frame["kind"] == "loft")
        + (frame["zone"].str[1:].astype(int) % 7) / 3 + rng.normal(size=rows)
    )  # fmt: skip
    out = path / f"houses-{rows}.csv"
    frame.to_csv(out, index=False)
    return out
