"""The steps of a search: plan it (``plan.py``), cross-validate its units
(``trials.run_trials``), then refit, register and promote the best (``finish``). The flows
(``flows.py``) and the sharded search (``sharded.py``) are made of these.

The ML work is in ``search``/``trial``; MLflow calls go through ``tracking.Tracker``. Prefect
appears here only as tasks and their fan-out; the task runner is chosen in ``runtime.py``.
"""

from __future__ import annotations

import json
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from mlpipe import drift, signals
from mlpipe.data import Dataset, Split
from mlpipe.errors import TuningError
from mlpipe.models import get_family
from mlpipe.scoring import (
    CLASSES_FILE,
    HeldOut,
    class_list,
    confusion,
    get_scoring,
    held_out,
    regression_metrics,
)
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
)
from mlpipe.tune import artifacts, rerun, tpe
from mlpipe.tune.plan import Prepared, pending_trials, prepare
from mlpipe.tune.profile import training_profile, with_missing
from mlpipe.tune.progress import NullObserver, Observer
from mlpipe.tune.trials import run_trials

# A classifier's confusion matrix on the test split, beside tuning_results.json
CONFUSION_FILE = "confusion_matrix.json"

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
    data_notes: list[str] = field(default_factory=list)  # columns and rows loading left out


@task(name="refit", cache_policy=NONE)
def refit(
    family: str, params: dict[str, Any], split: Split, dataset: Dataset, seed: int
) -> tuple[Any, np.ndarray]:
    """Refit the best config on the whole training split; predict the held-out split. A
    classifier that takes any labels learns the labels themselves (its predictions are labels,
    in MLflow's pyfunc too); XGBoost learns their codes."""
    chosen = get_family(family)
    y = split.y_train
    if chosen.task == "classification" and chosen.any_labels:
        y = dataset.decode(y)
    columns = dataset.columns if split.frame else None
    model = fit_final(chosen, params, split.X_train, y, seed, columns)
    return model, np.asarray(model.predict(split.X_test))


def test_scores(
    family: Any, model: Any, split: Split, predictions: np.ndarray
) -> tuple[dict[str, float], HeldOut | None]:
    """The refit model's metrics on the test split, and a classifier's ``scoring.HeldOut``."""
    if family.task == "regression":
        return regression_metrics(split.y_test.to_numpy(), predictions), None
    held = held_out(model, split.X_test, split.y_test.to_numpy(dtype=np.int64))
    return held.metrics, held


def run_search(spec: Spec, tracker: Tracker, fresh: bool) -> TuneOutcome:
    """The body of the flow for a grid or random search (``stepwise.run_search``: halving and
    tpe): must run inside a flow run (it submits tasks)."""
    observer = observer_var.get() or NullObserver()
    started = time.perf_counter()
    plan = prepare(spec)
    reused, todo = pending_trials(spec, plan, fresh)
    if not todo:
        params, name = plan.search_params(spec), spec.model_name
        earlier = rerun.find_earlier(tracker, plan.search_id, params, name, spec.scoring)
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
    "hist_gradient_boosting": ("mlflow.sklearn", "skops.io"),
    "xgboost": ("mlflow.xgboost",),
    "lightgbm": ("mlflow.sklearn", "skops.io"),
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
    name, version = spec.model_name, earlier.version
    score = earlier.test_metrics[spec.scoring]
    if tracker.champion_version(name) == version:
        promotion = Promotion(version, CHAMPION, score, version, None, spec.scoring)
    else:
        promotion = promote(tracker, spec, version, score, plan)
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
        data_notes=plan.dataset.notes,
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
    family = spec.family
    split, scoring = plan.split, spec.scoring
    results.sort(key=lambda r: r.index)
    best = select_best(results)
    if best is None:
        tracker.end_search(parent_run_id, ok=False)
        errors = sorted({r.error or "" for r in results})
        raise TuningError(
            f"all {len(results)} trials failed; first error: {errors[0] if errors else 'unknown'}"
        )

    model, predictions = refit.submit(
        family.key, best.params, split, plan.dataset, spec.seed
    ).result()
    test_metrics, held = test_scores(family, model, split, predictions)
    tracker.log_metrics(
        parent_run_id,
        {f"test_{k}": v for k, v in test_metrics.items()} | {f"best_cv_{scoring}": best.mean_score},
    )
    timings["refit"] = time.perf_counter() - started

    # The signature and the example describe the table as the user holds it (integer columns
    # stay integers), so mlflow.pyfunc takes the table as pandas reads it; a classifier's
    # output is a column named after the target, of the labels' type (string, boolean, long).
    outputs: Any = predictions
    if family.task == "classification":
        outputs = pd.Series(predictions, name=str(split.y_test.name))
    missing = plan.dataset.X.columns[plan.dataset.X.isna().any()]
    signature = infer_signature(plan.dataset.as_loaded(split.X_test), outputs, list(missing))
    profile = training_profile(spec, model, split, plan.dataset.classes)
    files = {drift.PROFILE_FILE: profile.to_json()}
    classes = plan.dataset.classes
    if classes is not None:
        files[CLASSES_FILE] = json.dumps(class_list(classes))
    mapping, parity_rows = None, with_missing(split.X_test, list(missing))
    if split.frame:  # the column kinds and each column's categories in the training split
        from mlpipe.columns import COLUMNS_FILE, categories

        columns = plan.dataset.columns
        mapping = categories(split.X_train, columns)
        files[COLUMNS_FILE] = json.dumps({**columns.to_json(), "categories": mapping}, indent=1)
        parity_rows = plan.dataset.as_loaded(parity_rows)  # as a client sends them
    model_uri, version = tracker.log_model(
        parent_run_id,
        family.name,
        model,
        plan.dataset.as_loaded(split.X_train.head(5)),
        signature,
        spec.model_name,
        held_out=parity_rows,
        files=files,
        categories=mapping,
    )
    tracker.tag_version(
        spec.model_name,
        version,
        {
            "mlpipe.search_id": plan.search_id,
            f"mlpipe.test_{scoring}": repr(test_metrics[scoring]),
            "mlpipe.data_fingerprint": plan.dataset.fingerprint,
        },
    )
    promotion = promote(tracker, spec, version, test_metrics[scoring], plan)
    if promotion.promoted:
        signals.model_promoted(spec.model_name, promotion)

    from mlpipe.encodings import column_encodings, source_importances

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
            "task": family.task,
            "data": plan.dataset.name,
            "data_fingerprint": plan.dataset.fingerprint,
            "cv": spec.search.cv,
            "seed": spec.seed,
            "parent_run_id": parent_run_id,
            "model_name": spec.model_name,
            "model_version": version,
            "alias": promotion.alias,
        }
        | plan.dataset.record
        | {
            "feature_importances": source_importances(model, list(split.X_train.columns)),
            "encodings": column_encodings(model),
        }
        | ({"param_importances": importances} if model_based else {}),
    )
    from mlpipe.registry import download_model
    from mlpipe.tune import report

    if held is not None:
        codes = split.y_test.to_numpy(dtype=np.int64)
        artifacts.write_json(out_dir / CONFUSION_FILE, confusion(codes, held.predicted, classes))
    report.write_report(out_dir / "report", results, split, predictions, model, family.name,
                        history=model_based, param_importances=importances, classes=classes,
                        held=held)  # fmt: skip
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
        data_notes=plan.dataset.notes,
    )


def promote(tracker: Tracker, spec: Spec, version: str, score: float, plan: Prepared) -> Promotion:
    """Move ``champion`` to ``version`` only if it beats the current champion on this test
    split, by the search's primary score."""
    model_name, scoring = spec.model_name, get_scoring(spec.scoring)
    current = tracker.champion_version(model_name)
    champion: float | None = None
    if current is not None and current != version:
        champion = champion_score(f"models:/{model_name}/{current}", spec, plan)
    wins = champion is None or scoring.loss(score) < scoring.loss(champion)
    alias = CHAMPION if wins else CHALLENGER
    tracker.set_alias(model_name, alias, version)
    return Promotion(version, alias, score, current, champion, scoring.name)


def champion_score(model_uri: str, spec: Spec, plan: Prepared) -> float:
    """The registered model's primary score on this search's test split: a regressor through
    MLflow's pyfunc, a classifier through its own flavor (the probabilities pyfunc lacks). A
    classifier of other classes than this data's scores +inf loss: it cannot win here."""
    from mlpipe.predictor import load_native, load_pyfunc, predict_frame

    split = plan.split
    if spec.model.task == "regression":
        predictions = predict_frame(load_pyfunc(model_uri), plan.dataset.as_loaded(split.X_test))
        return regression_metrics(split.y_test.to_numpy(), predictions)[spec.scoring]
    model = load_native(model_uri)
    classes = np.asarray(model.classes_)
    known = plan.dataset.classes
    assert known is not None
    if len(classes) != len(known) or not (
        np.array_equal(classes, known) or np.array_equal(classes, np.arange(len(known)))
    ):
        scoring = get_scoring(spec.scoring)
        return -np.inf if scoring.greater_is_better else np.inf
    codes = split.y_test.to_numpy(dtype=np.int64)
    return held_out(model, split.X_test, codes).metrics[spec.scoring]
