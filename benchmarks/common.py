"""What the benchmarks share: a fresh folder with its own Prefect home and MLflow store, and the
reference model (the default tuning's best RandomForest, registered as boston-rf@champion)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
MODEL = "models:/boston-rf@champion"
DATA = Path(__file__).parents[1] / "src/mlpipe/data/boston.csv"


def environment(folder: str, tracking_uri: str | None) -> dict[str, str]:
    """The benchmark's environment: the venv's bin first on PATH (`mlflow models serve` runs
    uvicorn from there), a private PREFECT_HOME, and ``tracking_uri`` or a store in ``folder``."""
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
        subprocess.run([str(BIN / "mlpipe"), "train", "--quiet"], cwd=folder, env=env,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return env
