"""The tuning stage, one folder: a search from spec to registered, promoted model.

- ``steps``: prepare, cross-validate, refit, register, promote (``finish``).
- ``trials``: the units cross-validated as Prefect tasks (the model work in a process pool).
- ``flows``: the ``tune`` and ``tune-finalize`` flows (what deployments name).
- ``sharded``: one search across processes or pods, met in MLflow, then finalized.
- ``runtime``: running a flow from a command (backends, task runner, log routing).
- ``artifacts``, ``report``, ``progress``: the result files, the plots, the terminal.

``mlpipe.tune.tune`` and ``mlpipe.tune.finalize_search`` stay importable here: deployments
registered by an earlier mlpipe name them as their entrypoints.
"""

from __future__ import annotations

from typing import Any

_FLOWS = ("tune", "finalize_search")


def __getattr__(name: str) -> Any:
    # Lazily, so importing a step (a Dask worker, a test) does not define the flows.
    if name in _FLOWS:
        from mlpipe.tune import flows

        return getattr(flows, name)
    raise AttributeError(f"module 'mlpipe.tune' has no attribute {name!r}")
