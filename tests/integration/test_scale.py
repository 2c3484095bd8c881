"""Scale-out for real: a `prefect server` and an `mlflow server` (SQLite) started here; shards as
separate `mlpipe train --shard I/N` processes with JOB_COMPLETION_INDEX set as an Indexed Job
sets it; finalize; a halving shard killed halfway and rerun; a Dask LocalCluster. Every variant
must give the single-machine run's trials, scores and best config (a grid's, TPE's), or
scikit-learn's (halving)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from conftest import (
    BIN,
    HALVING_GRID,
    TPE_SPEC,
    assert_same_as_halving_grid_on_boston,
    background,
    free_port,
    run_mlpipe,
)

pytestmark = pytest.mark.integration

# a grid of 8 units of 2 sizes, for 2 shards and a Dask cluster to split (the kills are of the
# halving and TPE searches below)
SPEC = {
    "search": {
        "params": {
            "n_estimators": [10, 20],
            "max_depth": [None, 4, 8, 12],
            "min_samples_leaf": [1, 3],
        }
    },
    "n_jobs": 1,
}


# model-based search: 2 batches of 4, each shard or worker evaluating part of a batch; a
# classifier ranked by accuracy (higher is better), so workers, shards, Dask and a resumed run
# all take a classifier's codes, folds and scores through the same steps
TPE = {
    **TPE_SPEC,
    "n_jobs": 1,
    "data": {"source": "breast_cancer"},
    "model": {"task": "classification"},
    "search": {**TPE_SPEC["search"], "n_trials": 8, "scoring": "accuracy"},
}
HALVING = {"seed": 4, "n_jobs": 1, "search": {"strategy": "halving", "params": HALVING_GRID}}


@pytest.fixture(scope="module")
def work(servers, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    for name, spec in (("spec", SPEC), ("tpe", TPE), ("halving", HALVING)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    env = {k: servers[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    return {"root": root, "env": env}


def train(work: dict, name: str, *args: str, expect: int = 0, spec: str = "spec", **env: str):
    """`mlpipe train` of one of the module's specs into experiment/model/artifacts ``name``."""
    result = run_mlpipe(
        ["train", "-c", f"{spec}.yaml", "--experiment", name, "--model-name", name,
         "--artifacts-dir", name, "--quiet", *args],
        work["root"], **work["env"], **env,
    )  # fmt: skip
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def results(work: dict, name: str) -> dict:
    [path] = (work["root"] / name).glob("*/tuning_results.json")
    return json.loads(path.read_text())


def scores(record: dict) -> list[tuple]:
    """What must not depend on where trials ran: ids, params, fold scores, status, order."""
    return [
        (t["trial_id"], t["params"], t["fold_scores"], t["mean_score"], t["status"])
        for t in record["trials"]
    ]


@pytest.fixture(scope="module")
def single() -> dict:
    """The grid on one machine with nothing around it: each unit of the plan `mlpipe train`
    makes, cross-validated in turn in this process (no Prefect, no MLflow, no pool), recorded
    as tuning_results.json records trials, with its search id and best."""
    from mlpipe.search import plan_units, select_best
    from mlpipe.spec import Spec
    from mlpipe.trial import cross_validate_unit
    from mlpipe.tune.plan import prepare

    spec = Spec.model_validate(SPEC)
    plan = prepare(spec)
    X, y = plan.split.train_arrays
    trials = [
        result
        for unit in plan_units(plan.trials, spec.family)
        for result in cross_validate_unit(unit, spec.family, X, y, plan.folds, spec.seed).results
    ]
    trials.sort(key=lambda r: r.index)
    best = select_best(trials)
    record = {
        "search_id": plan.search_id,
        "trials": [t.to_json() for t in trials],
        "best": {"trial_id": best.trial_id, "params": best.params, "mean_score": best.mean_score},
    }
    return json.loads(json.dumps(record))  # as read back from the file


def trial_runs(work: dict, experiment: str) -> list:
    """The finished trial runs of an experiment (a kill can leave one RUNNING: not counted)."""
    from mlflow import MlflowClient

    client = MlflowClient(work["env"]["MLFLOW_TRACKING_URI"])
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return list(
        client.search_runs(
            [found.experiment_id],
            "tags.`mlpipe.role` = 'trial' and attributes.status = 'FINISHED'",
            max_results=1000,
        )
    )


def start_train(
    work: dict, name: str, args: list[str], spec: str = "spec", **popen
) -> subprocess.Popen:
    """`mlpipe train` in the background; with ``--shard I/N``, as the Job's pod I runs it
    (JOB_COMPLETION_INDEX set)."""
    command = ["train", "-c", f"{spec}.yaml", "--experiment", name, "--model-name", name,
               "--artifacts-dir", name, "--quiet", *args]  # fmt: skip
    env = {**os.environ, **work["env"]}
    if "--shard" in args:
        env["JOB_COMPLETION_INDEX"] = args[args.index("--shard") + 1].split("/")[0]
    return subprocess.Popen([str(BIN / "mlpipe"), *command], cwd=work["root"], env=env, **popen)


def run_shards(work: dict, name: str, count: int, spec: str) -> list[str]:
    """Every shard of a search at once, as an Indexed Job's pods run; their outputs."""
    procs = [start_train(work, name, ["--shard", f"{i}/{count}"], spec, stdout=subprocess.PIPE,
                         text=True) for i in range(count)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * count, outputs
    return outputs


def test_shards_then_finalize_equal_one_machine(work, single):
    outputs = run_shards(work, "sharded", 2, "spec")
    search_id = single["search_id"]
    for i, out in enumerate(outputs):
        assert f"shard {i}/2 of search {search_id}" in out
    shard_files = sorted((work["root"] / "sharded" / search_id / "shards").glob("*.json"))
    shard_trials = [json.loads(p.read_text())["trials"] for p in shard_files]
    assert sorted(t["trial_id"] for ts in shard_trials for t in ts) == sorted(
        t["trial_id"] for t in single["trials"]
    )  # a partition: every trial in exactly one shard

    out = train(work, "sharded", "--finalize", search_id).stdout
    assert "registered sharded version 1 -> alias champion" in out
    sharded = results(work, "sharded")
    assert scores(sharded) == scores(single)
    assert sharded["best"] == single["best"]
    runs = trial_runs(work, "sharded")
    assert len(runs) == len(single["trials"])  # one run per trial, all under one parent
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {sharded["parent_run_id"]}


def killed_after_its_first_trial(work: dict, name: str, args: list[str], spec: str) -> None:
    """Start `mlpipe train` (with ``args``), and SIGKILL it and its pool processes as soon as
    MLflow holds one of its trials."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = start_train(work, name, args, spec, start_new_session=True, **quiet)
    try:
        deadline = time.monotonic() + 120
        while not trial_runs(work, name) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def test_a_killed_halving_shard_reruns_only_its_unfinished_trials(work):
    """Shards of a halving search run each rung's share, then wait for the others' in MLflow;
    one killed in rung 0 is named by finalize, and once rerun the search equals scikit-learn's
    HalvingGridSearchCV, with no trial run twice."""
    killed_after_its_first_trial(work, "killed", ["--shard", "0/2"], "halving")
    done_before = {r.data.tags["mlpipe.trial_id"] for r in trial_runs(work, "killed")}
    assert 0 < len(done_before) <= 9  # at most its half of rung 0's 18 candidates

    # finalize now: shard 0 is unfinished and shard 1 never ran; both are named, at rung 0
    [search_id] = {r.data.tags["mlpipe.search_id"] for r in trial_runs(work, "killed")}
    failed = train(work, "killed", "--finalize", search_id, spec="halving", expect=1)
    assert f"search {search_id} (rung 0):" in failed.stderr
    assert "shard 0/2:" in failed.stderr and "it says: running" in failed.stderr
    assert "shard 1/2:" in failed.stderr and "never started" in failed.stderr

    outputs = run_shards(work, "killed", 2, "halving")
    assert f"({len(done_before)} already in MLflow" in outputs[0]
    train(work, "killed", "--finalize", search_id, spec="halving")
    payload = results(work, "killed")
    ids = [r.data.tags["mlpipe.trial_id"] for r in trial_runs(work, "killed")]
    assert sorted(ids) == sorted(t["trial_id"] for t in payload["trials"])  # none run twice
    assert_same_as_halving_grid_on_boston(payload)
    eliminated = [r for r in trial_runs(work, "killed")
                  if r.data.tags.get("mlpipe.eliminated") == "true"]  # fmt: skip
    assert len(eliminated) == 12 + 4  # each shard tagged its own


@pytest.fixture(scope="module")
def tpe_single(work):
    """TPE on two workers, killed after its first trials, then run again to the end; and the
    trial runs the killed run had finished, with their fit times."""
    killed_after_its_first_trial(work, "tpe", ["--n-jobs", "2"], "tpe")
    before = {r.data.tags["mlpipe.trial_id"]: r.data.metrics["fit_seconds"]
              for r in trial_runs(work, "tpe")}  # fmt: skip
    train(work, "tpe", "--n-jobs", "2", spec="tpe")
    return {**results(work, "tpe"), "killed_run_finished": before}


def test_an_interrupted_tpe_search_resumes_without_recomputing(tpe_single):
    before = tpe_single["killed_run_finished"]
    assert 0 < len(before) < 8
    trials = {t["trial_id"]: t for t in tpe_single["trials"]}
    assert set(before) < set(trials)  # the same configs, asked again and told their scores
    # a trial the killed run finished keeps the fit time it was measured with there
    assert all(trials[tid]["fit_seconds"] == seconds for tid, seconds in before.items())


def test_tpe_tries_the_same_trials_on_two_workers_two_shards_and_dask(work, tpe_single):
    """TPE's configs depend on the seed and batch_size only: two workers on one machine, two
    shards of one worker each (then finalize), and a Dask LocalCluster of two workers try the
    same trials, score them the same and pick the same best."""
    assert len({t["trial_id"] for t in tpe_single["trials"]}) == 8
    outputs = run_shards(work, "tpe-sharded", 2, "tpe")
    search_id = tpe_single["search_id"]
    assert all(f"of search {search_id}" in out for out in outputs)
    train(work, "tpe-sharded", "--finalize", search_id, spec="tpe")
    sharded = results(work, "tpe-sharded")
    assert scores(sharded) == scores(tpe_single) and sharded["best"] == tpe_single["best"]

    train(work, "tpe-dask", "--executor", "dask-local", "--n-jobs", "2", spec="tpe")
    dask = results(work, "tpe-dask")
    assert scores(dask) == scores(tpe_single) and dask["best"] == tpe_single["best"]


def test_an_existing_dask_cluster_equals_one_machine(work, single):
    """`--executor dask://HOST:PORT`: a real `dask scheduler` and `dask worker` processes, the
    workers reporting to the Prefect server as a cluster's would."""
    port, dashboard = free_port(), free_port()
    root, env = work["root"], {**os.environ, **work["env"]}
    scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--dashboard-address", f"127.0.0.1:{dashboard}"]  # fmt: skip
    workers = [str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2",
               "--nthreads", "1", "--no-dashboard"]  # fmt: skip
    ready = f"http://127.0.0.1:{dashboard}/health"
    with (
        background(scheduler, root / "scheduler.log", ready, env=env),
        background(workers, root / "workers.log", ready, env=env),
    ):
        out = train(work, "dask-remote", "--executor", f"dask://127.0.0.1:{port}").stdout
    assert "registered dask-remote version 1" in out
    assert scores(results(work, "dask-remote")) == scores(single)
