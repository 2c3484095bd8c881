"""What a user's terminal shows: mlpipe's commands run in a real pseudo-terminal, from a shell
that sets none of the switches the Makefile sets (no analytics variables, no CI variables)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import BIN

from mlpipe.settings import LIBRARY_DEFAULTS

pytestmark = pytest.mark.integration

CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")
NOTICE = "collects anonymous usage data"
# a command that imports Prefect and MLflow, then stops at a bad option (exit 2) in a second
IMPORTS_PREFECT = [str(BIN / "mlpipe"), "train", "--cv", "500"]


class Screen(NamedTuple):
    code: int  # the exit status
    text: str  # what the terminal received, as read on the screen
    first_line_after: float  # seconds from the start to the first byte on the terminal


def in_terminal(args: list[str], cwd: Path, **env: str) -> Screen:
    """Run ``args`` with stdin, stdout and stderr on a pseudo-terminal."""
    shell = {k: v for k, v in os.environ.items() if k not in (*LIBRARY_DEFAULTS, *CI_VARIABLES)}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        args, cwd=cwd, env={**shell, **env}, stdin=follower, stdout=follower, stderr=follower
    )
    started = time.monotonic()
    os.close(follower)
    received, first = b"", float("inf")
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer closed it
            break
        if not chunk:
            break
        first = min(first, time.monotonic() - started)
        received += chunk
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", received.decode(errors="replace"))
    return Screen(proc.wait(timeout=120), text, first)  # colours and cursor moves gone


def test_no_telemetry_notice_on_a_users_terminal(tmp_path):
    fresh = {"PREFECT_HOME": str(tmp_path / "prefect")}  # a first run: Prefect's notice is due
    # the control: Prefect itself prints its notice on this terminal
    code, seen, _ = in_terminal([sys.executable, "-c", "import prefect"], tmp_path, **fresh)
    assert code == 0 and NOTICE in seen, seen
    fresh = {"PREFECT_HOME": str(tmp_path / "prefect-2")}
    code, seen, first = in_terminal(IMPORTS_PREFECT, tmp_path, **fresh)
    assert code == 2 and "search.cv: 500 folds" in seen, seen
    assert NOTICE not in seen and "telemetry" not in seen.lower(), seen
    # train says what it waits for before the imports and the server's start
    assert seen.startswith("starting Prefect's temporary server (10-30 s on a first run"), seen
    # before the heavy imports and the server's 10-30 s: 1.8-3.2 s here on an idle machine
    # (the spec's check imports scikit-learn), up to 5 s with the suite's other tests beside it
    assert first < 10, first


def test_a_users_own_choice_is_kept(tmp_path):
    code, seen, _ = in_terminal(
        IMPORTS_PREFECT,
        tmp_path,
        PREFECT_HOME=str(tmp_path / "prefect"),
        DO_NOT_TRACK="0",  # telemetry on, as this user chose
    )
    assert code == 2 and NOTICE in seen, seen


def test_scoring_a_csv_shows_a_bar_with_its_total(trained, tmp_path):
    import pandas as pd

    frame = pd.read_csv(Path(__file__).parents[2] / "src/mlpipe/data/boston.csv")
    pd.concat([frame] * 40).to_csv(tmp_path / "houses.csv", index=False)  # 20,240 rows
    args = [str(BIN / "mlpipe"), "score", "-m", "models:/boston-rf@champion", "-i",
            "houses.csv", "-o", "scored.parquet"]  # fmt: skip
    code, seen, _ = in_terminal(args, tmp_path, MLFLOW_TRACKING_URI=trained["uri"])
    assert code == 0, seen
    assert "0/20240" in seen, seen  # the bar's "done/total", from its first frame
    assert "scored 20,240 of 20,240 rows" in seen
