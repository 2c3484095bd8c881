"""The steps of a search: plan it (``plan.py``), cross-validate its units
(``trials.run_trials``), then refit, register and promote the best (``finish``). The flows
(``flows.py``) and the sharded search (``sharded.py``) are made of these.

The ML work is in ``search``/``trial``; MLflow calls go through ``tracking.Tracker``. Prefect
appears here only as tasks and their fan-out; the task runner is chosen in ``runtime.py``.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from mlpipe import drift, signals
from mlpipe.data import Split
from mlpipe.errors import TuningError
from mlpipe.models import get_family
from mlpipe.search import (
    select_best,
)
from mlpipe.spec import Spec
from mlpipe.tracking import (
    CHALLENGER,
    CHAMPION,
    Promotion,
    Tracker,
    infer_signature,
)
from mlpipe.trial import (
    TrialResult,
    fit_final,
    regression_metrics,
)
from mlpipe.tune import artifacts, rerun, tpe
from mlpipe.tune.plan import Prepared, pending_trials, prepare
from mlpipe.tune.progress import NullObserver, Observer
from mlpipe.tune.trials import run_trials

# Progress is presentation, not a flow parameter: the caller sets it around the flow call.
observer_var: ContextVar[Observer | None] = ContextVar("mlpipe_observer", default=None)


@dataclass
class TuneOutcome:
    """What a finished search produced (what the CLI prints)."""

    search_id: str
    artifacts_path: str
    parent_run_id: str
    experiment_id: str
    results: list[TrialResult]
    best: TrialResult
    test_metrics: dict[str, float]
    model_uri: str
    model_name: str
    promotion: Promotion
    reused: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    unchanged: bool = False  # a rerun that found this search registered already (rerun.py)


@task(name="refit", cache_policy=NONE)
def refit(family: str, params: dict[str, Any], split: Split, seed: int) -> tuple[Any, np.ndarray]:
    """Refit the best config on the whole training split; predict the held-out split."""
    model = fit_final(get_family(family), params, split.X_train, split.y_train, seed)
    return model, np.asarray(model.predict(split.X_test))


def run_search(spec: Spec, tracker: Tracker, fresh: bool) -> TuneOutcome:
    """The body of the flow for a grid or random search (``stepwise.run_search``: halving and
    tpe): must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    reused, todo = pending_trials(spec, plan, fresh)
    if not todo:
        params, name = plan.search_params(spec), spec.model_name
        earlier = rerun.find_earlier(tracker, plan.search_id, params, name)
        if earlier is not None:
            observer.start(total=len(plan.trials), reused=len(reused))
            observer.finish()
            return repeat(spec, plan, tracker, earlier, reused, started)

    parent_run_id = tracker.start_search(plan.search_id, plan.search_params(spec), plan.search_tags)
    observer.start(total=len(plan.trials), reused=len(reused))
    results: list[TrialResult] = []
    for result in reused:
        tracker.log_trial(parent_run_id, plan.search_id, result)
        results.append(result)
    timings = {"prepare": time.perf_counter() - started}
    preload(MODEL_WRITERS[spec.model.family])
    results += run_trials(spec, plan, todo, tracker, parent_run_id, observer, results)
    observer.finish()
    timings["trials"] = time.perf_counter() - started - timings["prepare"]
    return finish(spec, plan, tracker, parent_run_id, results, len(reused), timings)


# What registering a model imports: skops (every scikit-learn estimator module, for its list of
# trusted types) took 4 of register's 7.8 s here. Imported on a thread while the trials run,
# where the pool leaves the parent idle and the last units leave a core free.
MODEL_WRITERS = {
    "random_forest": ("mlflow.sklearn", "skops.io"),
    "extra_trees": ("mlflow.sklearn", "skops.io"),
    "xgboost": ("mlflow.xgboost",),
}


def preload(modules: tuple[str, ...]) -> None:
    """Import ``modules`` on a background thread (a later import waits for it, if still busy)."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            importlib.import_module(name)

    threading.Thread(target=run, name="mlpipe-preload", daemon=True).start()


def repeat(
    spec: Spec,
    plan: Prepared,
    tracker: Tracker,
    earlier: rerun.Earlier,
    reused: list[TrialResult],
    started: float,
) -> TuneOutcome:
    """The outcome of the search this run repeats: its parent run and version, nothing logged
    again. A champion stays one; another version is compared with today's champion, as a new
    one would be (and the alias moves, with its event, only if it wins)."""
    name, version, test_mse = spec.model_name, earlier.version, earlier.test_metrics["mse"]
    if tracker.champion_version(name) == version:
        promotion = Promotion(version, CHAMPION, test_mse, version, None)
    else:
        promotion = promote(tracker, name, version, test_mse, plan.split)
        if promotion.promoted:
            signals.model_promoted(name, promotion)
    return TuneOutcome(
        search_id=plan.search_id,
        artifacts_path=str(Path(spec.artifacts_dir) / plan.search_id),
        parent_run_id=earlier.parent_run_id,
        experiment_id=tracker.experiment_id,
        results=sorted(reused, key=lambda r: r.index),
        best=select_best(reused),
        test_metrics=earlier.test_metrics,
        model_uri=f"models:/{name}/{version}",
        model_name=name,
        promotion=promotion,
        reused=len(reused),
        timings={"lookup": time.perf_counter() - started},
        unchanged=True,
    )


def finish(
    spec: Spec,
    plan: Prepared,
    tracker: Tracker,
    parent_run_id: str,
    results: list[TrialResult],
    reused: int,
    timings: dict[str, float],
) -> TuneOutcome:
    """Pick the best trial, refit it, score it on the held-out split, register it, move the
    alias if it beats the champion, and write the results: the same for one machine or shards."""
    started = time.perf_counter()
    family = get_family(spec.model.family)
    split = plan.split
    results.sort(key=lambda r: r.index)
    best = select_best(results)
    if best is None:
        tracker.end_search(parent_run_id, ok=False)
        errors = sorted({r.error or "" for r in results})
        raise TuningError(
            f"all {len(results)} trials failed; first error: {errors[0] if errors else 'unknown'}"
        )

    model, predictions = refit.submit(family.name, best.params, split, spec.seed).result()
    test_metrics = regression_metrics(split.y_test.to_numpy(), predictions)
    tracker.log_metrics(
        parent_run_id,
        {f"test_{k}": v for k, v in test_metrics.items()} | {"best_cv_mse": best.mean_score},
    )
    timings["refit"] = time.perf_counter() - started

    # The signature and the example describe the table as the user holds it (integer columns
    # stay integers), so mlflow.pyfunc takes the table as pandas reads it.
    signature = infer_signature(plan.dataset.as_loaded(split.X_test), predictions)
    profile = training_profile(spec, model, split)
    model_uri, version = tracker.log_model(
        parent_run_id,
        family.name,
        model,
        plan.dataset.as_loaded(split.X_train.head(5)),
        signature,
        spec.model_name,
        held_out=split.X_test,
        files={drift.PROFILE_FILE: profile.to_json()},
    )
    tracker.tag_version(
        spec.model_name,
        version,
        {
            "mlpipe.search_id": plan.search_id,
            "mlpipe.test_mse": repr(test_metrics["mse"]),
            "mlpipe.data_fingerprint": plan.dataset.fingerprint,
        },
    )
    promotion = promote(tracker, spec.model_name, version, test_metrics["mse"], split)
    if promotion.promoted:
        signals.model_promoted(spec.model_name, promotion)

    out_dir = Path(spec.artifacts_dir) / plan.search_id
    model_based = spec.search.strategy == "tpe"
    importances = tpe.param_importances(spec, results) if model_based else None
    artifacts.write_results(
        out_dir,
        plan.search_id,
        results,
        best,
        test_metrics,
        extra={
            "family": family.name,
            "data": plan.dataset.name,
            "data_fingerprint": plan.dataset.fingerprint,
            "cv": spec.search.cv,
            "seed": spec.seed,
            "parent_run_id": parent_run_id,
            "model_name": spec.model_name,
            "model_version": version,
            "alias": promotion.alias,
        }
        | ({"param_importances": importances} if model_based else {}),
    )
    from mlpipe.predictor import download_model
    from mlpipe.tune import report

    report.write_report(out_dir / "report", results, split, predictions, model, family.name,
                        history=model_based, param_importances=importances)  # fmt: skip
    download_model(model_uri, out_dir / "model")
    tracker.log_artifacts(parent_run_id, out_dir)
    tracker.end_search(parent_run_id, ok=True)
    timings["register"] = time.perf_counter() - started - timings["refit"]
    return TuneOutcome(
        search_id=plan.search_id,
        artifacts_path=str(out_dir),
        parent_run_id=parent_run_id,
        experiment_id=tracker.experiment_id,
        results=results,
        best=best,
        test_metrics=test_metrics,
        model_uri=model_uri,
        model_name=spec.model_name,
        promotion=promotion,
        reused=reused,
        timings=timings,
    )


def training_profile(spec: Spec, model: Any, split: Split) -> drift.Profile:
    """The training split's features and the model's predictions on them, with the spec's
    drift thresholds: what batch runs and the server compare new inputs with."""
    monitoring = spec.monitoring
    return drift.build_profile(
        list(split.X_train.columns),
        split.X_train.to_numpy(dtype=np.float64),
        np.asarray(model.predict(split.X_train)).ravel(),
        drift.Thresholds(
            psi=monitoring.psi_threshold,
            ks=monitoring.ks_threshold,
            min_rows=monitoring.min_rows,
            window=monitoring.window,
            p_value=monitoring.p_value,
        ),
    )


def promote(
    tracker: Tracker, model_name: str, version: str, test_mse: float, split: Split
) -> Promotion:
    """Move ``champion`` to ``version`` only if it beats the current champion on this test split."""
    from mlpipe.predictor import load_pyfunc, predict_frame

    current = tracker.champion_version(model_name)
    champion_mse: float | None = None
    if current is not None and current != version:
        champion = load_pyfunc(f"models:/{model_name}/{current}")
        champion_mse = regression_metrics(
            split.y_test.to_numpy(), predict_frame(champion, split.X_test)
        )["mse"]
    alias = CHAMPION if champion_mse is None or test_mse < champion_mse else CHALLENGER
    tracker.set_alias(model_name, alias, version)
    return Promotion(version, alias, test_mse, current, champion_mse)
