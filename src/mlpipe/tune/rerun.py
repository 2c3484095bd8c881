"""A rerun that changes nothing: every trial reused and the search already registered.

Rerunning an unchanged search used to add a parent run with copies of every trial and a new
version each time (v2 ... v6 after five identical runs). When each trial of this run comes from
an earlier run's results and a finished parent run of the same search, logged with the same
split and data, has a registered version of this model, that run and version are the answer:
nothing is logged or registered again (``steps.repeat``). A changed spec or data is another
search; ``--fresh`` reruns everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.tracking import Tracker


@dataclass(frozen=True)
class Earlier:
    """The finished search this run would repeat: its parent run, version and test scores."""

    parent_run_id: str
    version: str
    test_metrics: dict[str, float]


def find_earlier(
    tracker: Tracker,
    search_id: str,
    params: Mapping[str, Any],
    model_name: str,
    scoring: str = "mse",
) -> Earlier | None:
    """The latest finished parent run of ``search_id`` with these parameters and a version of
    ``model_name`` registered from it; None when there is none (this run is a new search)."""
    found = tracker.finished_search(search_id, params)
    if found is None:
        return None
    parent_run_id, metrics = found
    version = tracker.version_of_run(model_name, parent_run_id)
    test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    if version is None or scoring not in test:
        return None
    return Earlier(parent_run_id, version, test)
