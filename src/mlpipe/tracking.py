"""MLflow at the edge: the parent run of a search, a child run per trial (the model and the
registry: ``registry.Registry``, which ``Tracker`` takes in).

With ``registry``, the only module that imports mlflow for writing. It receives an
``MlflowClient`` (built by ``connect``), so tests and other stores plug in without global state
beyond MLflow's own tracking URI.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlpipe.errors import UserError
from mlpipe.links import EXPERIMENT_KIND
from mlpipe.registry import (  # noqa: F401 - the names callers import from here
    CHALLENGER,
    CHAMPION,
    SKOPS_TRUSTED_TYPES,
    Promotion,
    Registry,
    infer_signature,
)
from mlpipe.trial import TrialResult

ROLE_TAG = "mlpipe.role"  # "search" (a parent run) or "trial"
SHARDS_TAG = "mlpipe.shards"  # on a sharded search's parent: how many shards
RESULT_TAG = "mlpipe.result"  # on a trial: its TrialResult as JSON
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value


class Tracker(Registry):
    """Writes one search to MLflow: runs, metrics, artifacts, the model and its alias."""

    def __init__(self, client: Any, experiment_name: str) -> None:
        from mlflow.exceptions import MlflowException

        self.client = client
        try:
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is not None:
                self.experiment_id = experiment.experiment_id
                if not EXPERIMENT_KIND.items() <= experiment.tags.items():  # an older one
                    for key, value in EXPERIMENT_KIND.items():
                        client.set_experiment_tag(self.experiment_id, key, value)
            else:
                try:
                    self.experiment_id = client.create_experiment(
                        experiment_name, tags=EXPERIMENT_KIND
                    )
                except MlflowException as exc:
                    # shards starting together race to create it: the loser takes the winner's
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    self.experiment_id = client.get_experiment_by_name(
                        experiment_name
                    ).experiment_id
        except MlflowException as exc:
            raise UserError(
                f"MLflow store {client.tracking_uri}: cannot open experiment "
                f"{experiment_name!r}: {exc.message}"
            ) from exc

    @classmethod
    def connect(cls, tracking_uri: str, experiment_name: str) -> Tracker:
        """A tracker on ``tracking_uri`` (a SQLite file, a folder or an ``mlflow server``)."""
        import mlflow
        from mlflow import MlflowClient

        # log_model and the model loaders use MLflow's fluent API, which reads the global URI.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        with _schema_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            return cls(client, experiment_name)

    def start_search(
        self, search_id: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> str:
        """Create the parent run of a search; returns its run id."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"search-{search_id}",
            tags={"mlpipe.search_id": search_id, ROLE_TAG: "search", **tags},
        )
        self._log(run.info.run_id, params=params)
        return str(run.info.run_id)

    def attach_search(
        self, search_id: str, params: Mapping[str, Any], tags: Mapping[str, str], shards: int
    ) -> str:
        """The parent run that the shards of a search share: the open one for this search and
        shard count, else a new one. Shards starting at once may each create one; all of them
        then pick the earliest, and a shard whose own run lost deletes it before logging to it.
        (A shard that saw only its own run keeps it; ``gather_trials`` collects the trials of
        every open parent, and finalize folds them into one.)"""
        found = self.open_searches(search_id, shards)
        if found:
            return str(found[0].info.run_id)
        created = self.start_search(search_id, params, {**tags, SHARDS_TAG: str(shards)})
        chosen = str(self.open_searches(search_id, shards)[0].info.run_id)
        if chosen != created:
            self.client.delete_run(created)
        return chosen

    def open_searches(self, search_id: str, shards: int | None = None) -> list[Any]:
        """The unfinished sharded parent runs of a search (for ``shards`` shards, or any),
        earliest first."""
        count = f"= '{shards}'" if shards is not None else "IS NOT NULL"
        runs = self._search(
            f"tags.`mlpipe.search_id` = '{search_id}' and tags.`{ROLE_TAG}` = 'search' "
            f"and tags.`{SHARDS_TAG}` {count} and attributes.status = 'RUNNING'"
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def finished_search(
        self, search_id: str, params: Mapping[str, Any]
    ) -> tuple[str, dict[str, float]] | None:
        """The latest finished parent run of ``search_id`` logged with these ``params`` (the
        split and data they name): its id and metrics; None if there is none."""
        runs = self._search(
            f"tags.`mlpipe.search_id` = '{search_id}' and tags.`{ROLE_TAG}` = 'search' "
            "and attributes.status = 'FINISHED'"
        )
        wanted = {k: str(v) for k, v in params.items()}
        for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
            if run.data.params == wanted:
                return str(run.info.run_id), dict(run.data.metrics)
        return None

    def adopt(self, parent_run_id: str, other_parent_id: str) -> None:
        """Move the trial runs of ``other_parent_id`` under ``parent_run_id``; delete the other."""
        for run in self._search(f"tags.`mlflow.parentRunId` = '{other_parent_id}'"):
            self.client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)
        self.client.delete_run(other_parent_id)

    def gather_trials(
        self, search_id: str, parent_run_ids: list[str] | None
    ) -> dict[str, tuple[str, TrialResult]]:
        """The trials of a search logged under these parents (None: any) and ended (finished or
        failed), by trial id: (run id, result). A trial logged twice (a shard killed mid-log,
        then rerun) counts once."""
        runs = self._search(
            f"tags.`mlpipe.search_id` = '{search_id}' and tags.`{ROLE_TAG}` = 'trial'"
        )
        found: dict[str, tuple[str, TrialResult]] = {}
        for run in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id)):
            record = run.data.tags.get(RESULT_TAG)
            if (
                (
                    parent_run_ids is not None
                    and run.data.tags.get("mlflow.parentRunId") not in parent_run_ids
                )
                or run.info.status not in ("FINISHED", "FAILED")
                or record is None
            ):
                continue
            result = TrialResult.from_json(json.loads(record))
            earlier = found.get(result.trial_id)
            if earlier is None or earlier[1].status != "completed":  # a rerun that succeeded
                found[result.trial_id] = (str(run.info.run_id), result)
        return found

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_trial(self, parent_run_id: str, search_id: str, result: TrialResult) -> str:
        """One nested child run: params, per-fold and mean/std CV metrics, fit seconds, status,
        and the whole result as a tag, so shards' trials can be gathered in one search."""
        record = json.dumps(result.to_json(), separators=(",", ":"))
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{result.trial_id}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                ROLE_TAG: "trial",
                "mlpipe.search_id": search_id,
                "mlpipe.trial_id": result.trial_id,
                "mlpipe.status": result.status,
                **({"mlpipe.error": result.error[:4000]} if result.error else {}),
                **(
                    {"mlpipe.rung": str(result.rung), "mlpipe.resources": str(result.resources)}
                    if result.rung is not None
                    else {}
                ),
                **({RESULT_TAG: record} if len(record) <= MAX_TAG_LENGTH else {}),
            },
        )
        run_id = run.info.run_id
        metrics: dict[str, float] = {"fit_seconds": result.fit_seconds}
        steps: list[tuple[str, float, int]] = []
        for name, values in result.fold_metrics.items():
            # numpy's, as the trial's own: NaN (a metric refused on a fold) stays NaN
            metrics[f"cv_{name}_mean"] = float(np.mean(values))
            metrics[f"cv_{name}_std"] = float(np.std(values))
            steps += [(f"cv_{name}_fold", v, i) for i, v in enumerate(values)]
        self._log(run_id, params=result.params, metrics=metrics, steps=steps)
        self.client.set_terminated(run_id, "FINISHED" if result.status == "completed" else "FAILED")
        return str(run_id)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        self._log(run_id, metrics=metrics)

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_scoring(
        self,
        run_name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        texts: Mapping[str, str],
    ) -> str:
        """One finished run for one batch scoring run: its figures and files (the drift
        report); returns the run id."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={ROLE_TAG: "scoring", **tags}
        )
        run_id = str(run.info.run_id)
        self._log(run_id, params=params, metrics=metrics)
        for name, text in texts.items():
            self.client.log_text(run_id, text, name)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def end_search(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def _log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        steps: list[tuple[str, float, int]] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
            + [Metric(k, float(v), now, step) for k, v, step in steps or []],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
        )


@contextlib.contextmanager
def _schema_lock(tracking_uri: str) -> Iterator[None]:
    """Processes opening one new SQLite store at once (shards on one machine) race in MLflow's
    schema migration ("Online migration expected to match one row"); take turns on a lock file
    beside the database. Servers and other stores need nothing."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    path = database.with_name(database.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
