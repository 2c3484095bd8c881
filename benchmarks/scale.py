"""Scale-out on this machine: the default search (the reference grid, 81 trials) run

  (a) by one process on one core (`mlpipe train --n-jobs 1`, pinned with sched_setaffinity),
      the servers it talks to on the same core: the whole system on one core, T(1); and (a')
      with the servers on the other core, for comparison,
  (b) as 2 shards at once, one core each (`mlpipe train --shard I/2`), with `--finalize
      --wait` started beside them as the Kubernetes Jobs run (it polls MLflow, then refits),
  (c) on a 2-worker Dask LocalCluster (`mlpipe train --executor dask-local --n-jobs 2`),

all against one `mlpipe up` stack (Prefect server, MLflow server with SQLite, a worker) started
here, as a cluster's pods would share them. Prints wall times (whole commands, and the trials
phase each process reports), speedup and parallel efficiency (speedup / 2), the cost balance
between the shards, and whether all variants gave identical trials and best config.

    make bench-scale        (or: python benchmarks/scale.py)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import BIN

CORES = sorted(os.sched_getaffinity(0))


def start_stack(folder: Path) -> tuple[list[int], dict[str, str]]:
    """`mlpipe up`'s stack (Prefect server, MLflow server with SQLite, a worker) in ``folder``:
    the pids of its process groups and the environment that points mlpipe at it."""
    from mlpipe.deploy import stack

    running = stack.up(folder, prefect_port=0, mlflow_port=0)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **running.environment()}
    return [s.pid for s in running.services], env


def mlpipe(folder: Path, env: dict, name: str, *args: str, cores: list[int] | None = None):
    """Start `mlpipe train` into experiment/model/artifacts ``name``, optionally pinned."""
    command = [str(BIN / "mlpipe"), "train", "--experiment", name, "--model-name", name,
               "--artifacts-dir", name, "--quiet", *args]  # fmt: skip
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=pin,
    )  # fmt: skip


def cpu_seconds(pids: list[int]) -> float:
    """CPU time used so far by the servers and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


def pin(pids: list[int], cores: list[int]) -> None:
    """Move the servers and their children to ``cores``."""
    import psutil

    for pid in pids:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                p.cpu_affinity(cores)


def settle(procs: list[int], limit: float = 90) -> None:
    """Wait until the servers are idle (the Prefect server keeps busy for a while after it first
    answers), so no variant pays for their start-up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_seconds(procs)
        time.sleep(2)
        if cpu_seconds(procs) - before < 0.2:
            return


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args} failed:\n{out}\n{err}")
    return out


def phase(output: str, name: str) -> float:
    """A phase's seconds from the `timings:` line a run prints."""
    found = re.search(rf"\b{name} ([0-9.]+)s", output)
    assert found, output
    return float(found.group(1))


def scores(folder: Path, name: str) -> list:
    [path] = (folder / name).glob("*/tuning_results.json")
    record = json.loads(path.read_text())
    trials = [(t["trial_id"], t["fold_scores"], t["status"]) for t in record["trials"]]
    return [trials, record["best"]]


def main() -> None:
    if len(CORES) < 2:
        raise SystemExit("needs 2 cores")
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-scale-") as tmp:
        folder = Path(tmp)
        servers, env = start_stack(folder)
        try:
            run(folder, env, servers)
        finally:
            from mlpipe.deploy import stack

            running = stack.Stack.load(folder)
            if running is not None:
                stack.down(running)


def run(folder: Path, env: dict, servers: list[int]) -> None:
    settle(servers)
    print(f"cores: {len(CORES)}; servers up; (a) one core for everything ...")
    server_cpu = [cpu_seconds(servers)]

    def one_core(name: str, server_cores: list[int]) -> tuple[float, float]:
        """`mlpipe train` on the first core, the servers on ``server_cores``: wall, trials."""
        pin(servers, server_cores)
        started = time.perf_counter()
        out = finish(mlpipe(folder, env, name, "--n-jobs", "1", cores=CORES[:1]))
        wall = time.perf_counter() - started
        server_cpu.append(cpu_seconds(servers))
        pin(servers, CORES)
        return wall, phase(out, "trials")

    # T(1) of the whole system: mlpipe and the servers it talks to share one core
    wall_one, trials_one = one_core("one", CORES[:1])
    print("(a') one core for mlpipe, the servers on the other ...")
    wall_alone, trials_alone = one_core("alone", CORES[1:])

    print("(b) 2 shards at once, one core each, and finalize waiting for them ...")
    from mlpipe.spec import load_spec
    from mlpipe.tune.plan import prepare

    search_id = prepare(load_spec()).search_id  # as `mlpipe deploy k8s` computes it
    started = time.perf_counter()
    # as the Jobs run: the shards and the finalize pod start together; finalize polls MLflow
    waiting = mlpipe(folder, env, "sharded", "--finalize", search_id, "--wait", "900")
    shards = [
        mlpipe(folder, {**env, "JOB_COMPLETION_INDEX": str(i)}, "sharded", "--n-jobs", "1",
               "--shard", f"{i}/2", cores=[CORES[i]])
        for i in range(2)
    ]  # fmt: skip
    shard_out = [finish(p) for p in shards]
    wall_shards = time.perf_counter() - started
    finalize = finish(waiting)
    wall_sharded = time.perf_counter() - started
    server_cpu.append(cpu_seconds(servers))
    trials_sharded = max(phase(out, "trials") for out in shard_out)
    shard_files = sorted((folder / "sharded" / search_id / "shards").glob("*.json"))
    shard_fit = [json.loads(p.read_text())["fit_seconds"] for p in shard_files]
    shard_trials = [phase(out, "trials") for out in shard_out]

    print("(c) Dask LocalCluster, 2 single-threaded workers ...")
    started = time.perf_counter()
    dask = finish(mlpipe(folder, env, "dask", "--executor", "dask-local", "--n-jobs", "2"))
    wall_dask, trials_dask = time.perf_counter() - started, phase(dask, "trials")
    server_cpu.append(cpu_seconds(servers))
    used = [round(b - a, 1) for a, b in itertools.pairwise(server_cpu)]

    def row(label: str, wall: float, trials: float, workers: int = 2) -> str:
        if workers == 1:
            return f"{label:<34}{wall:>8.1f}{trials:>9.1f}{'':>9}{'':>7}{'':>9}{'':>7}"
        return (
            f"{label:<34}{wall:>8.1f}{trials:>9.1f}{wall_one / wall:>9.2f}"
            f"{wall_one / wall / 2:>7.2f}{trials_one / trials:>9.2f}{trials_one / trials / 2:>7.2f}"
        )

    print(f"\nthe default search ({len(scores(folder, 'one')[0])} trials), this machine")
    print("speedup and efficiency (speedup / 2) against (a), of whole commands and of the trials")
    print(f"{'':<34}{'wall s':>8}{'trials s':>9}{'speedup':>9}{'eff':>7}{'speedup':>9}{'eff':>7}")
    print(f"{'':<34}{'':>8}{'':>9}{'(wall)':>9}{'':>7}{'(trials)':>9}{'':>7}")
    print(row("(a) one core for everything", wall_one, trials_one, workers=1))
    print(row("(a') mlpipe 1 core, servers other", wall_alone, trials_alone, workers=1))
    print(row("(b) 2 shards + finalize", wall_sharded, trials_sharded))
    print(row("(c) Dask LocalCluster, 2 workers", wall_dask, trials_dask))
    print(
        f"(b) the shards: {wall_shards:.1f} s; finalize done {wall_sharded - wall_shards:.1f} s "
        f"later (refit {phase(finalize, 'refit'):.1f} s, register "
        f"{phase(finalize, 'register'):.1f} s, the rest its polling interval)"
    )
    print("(b) finalize " + re.findall(r"timings: .*", finalize)[0])
    spread_fit = max(shard_fit) / min(shard_fit) - 1
    spread_trials = max(shard_trials) / min(shard_trials) - 1
    print(
        f"shard balance: fit seconds {shard_fit[0]:.2f} / {shard_fit[1]:.2f} "
        f"(spread {100 * spread_fit:.1f}%); trials phase {shard_trials[0]:.1f} / "
        f"{shard_trials[1]:.1f} s (spread {100 * spread_trials:.1f}%); target within 10%"
    )
    print(
        "CPU used by the stack (Prefect and MLflow servers, worker) during (a), (a'), (b), (c): "
        + " / ".join(f"{u} s" for u in used)
    )
    names = ("one", "alone", "sharded", "dask")
    same = all(scores(folder, name) == scores(folder, "one") for name in names)
    print(f"identical trials, fold scores and best config in (a), (a'), (b), (c): {same}")


if __name__ == "__main__":
    main()
