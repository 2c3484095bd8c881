"""Benchmark: the full image against the serving image (`make image` builds both): their sizes,
what each holds (largest packages first), and the time from `docker run ... serve` to the first
200 from /ready, with the same registered model.

A Prefect and an MLflow server start on loopback (`mlpipe up`'s own code), `mlpipe train`
registers a small forest on Boston in that MLflow server, then each image serves it in turn
(--runs times, alternating, on the host's network) and the start-to-ready times are printed side
by side: median and best, and the ratio of the medians. Nothing is cached between runs but the
image itself (each `docker run` is a new container).

Usage: python benchmarks/image.py [--runs 5] [--image mlpipe:0.1.0]
                                  [--serve-image mlpipe-serve:0.1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import BIN

SPEC = "n_jobs: 1\nsearch:\n  params:\n    n_estimators: [50]\n    max_depth: [null, 8]\n"
# the largest folders of the venv, as `du` counts them (MB), for the README's lists
SIZES = (
    "cd /opt/mlpipe/lib/python3.11/site-packages && du -sm * | sort -rn | head -{n} && "
    "du -sm /opt/mlpipe | cut -f1"
)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def size_mb(image: str) -> float:
    return int(docker("image", "inspect", "--format", "{{.Size}}", image)) / 1e6


def contents(image: str, n: int) -> tuple[list[tuple[int, str]], int]:
    out = docker("run", "--rm", "--entrypoint", "sh", image, "-c", SIZES.format(n=n)).split("\n")
    rows = [line.split("\t") for line in out if "\t" in line]
    return [(int(mb), name) for mb, name in rows], int(out[-2])


def start_to_ready(image: str, tracking_uri: str, port: int) -> float:
    """Seconds from `docker run` to the first 200 from /ready; the container is removed."""
    name = f"mlpipe-bench-{port}"
    started = time.perf_counter()
    docker("run", "--detach", "--rm", "--name", name, "--network", "host",
           "--env", f"MLFLOW_TRACKING_URI={tracking_uri}", image, "serve", "--host", "127.0.0.1",
           "--port", str(port), "--model", "models:/boston-rf@champion")  # fmt: skip
    try:
        with httpx.Client(timeout=1) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{image} not ready in 120 s: {docker('logs', name)}")
                time.sleep(0.02)
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="mlpipe:0.1.0")
    parser.add_argument("--serve-image", default="mlpipe-serve:0.1.0")
    args = parser.parse_args()

    from mlpipe.deploy import stack
    from mlpipe.processes import free_port

    images = {"full": args.image, "serve": args.serve_image}
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-image-") as folder:
        started = stack.up(Path(folder) / "stack", 0, 0, with_worker=False)
        try:
            env = started.environment()
            (Path(folder) / "spec.yaml").write_text(SPEC)
            print("training boston-rf into the MLflow server (mlpipe train) ...", flush=True)
            subprocess.run([str(BIN / "mlpipe"), "train", "--config", "spec.yaml", "--quiet"],
                           cwd=folder, env={**env, "PATH": f"{BIN}:/usr/bin:/bin"},
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            times: dict[str, list[float]] = {which: [] for which in images}
            port = free_port()
            for _ in range(args.runs):
                for which, image in images.items():
                    times[which].append(start_to_ready(image, env["MLFLOW_TRACKING_URI"], port))
        finally:
            stack.down(started, grace=15)

    sizes = {which: size_mb(image) for which, image in images.items()}
    print(f"\n{'':24}{'full':>14}{'serving':>14}{'serving/full':>14}")
    print(f"{'image size (MB)':24}{sizes['full']:>14,.0f}{sizes['serve']:>14,.0f}"
          f"{sizes['serve'] / sizes['full']:>14.2f}")  # fmt: skip
    medians = {which: statistics.median(t) for which, t in times.items()}
    print(f"{'start to /ready, median':24}{medians['full']:>13.2f}s{medians['serve']:>13.2f}s"
          f"{medians['serve'] / medians['full']:>14.2f}")  # fmt: skip
    print(f"{'start to /ready, best':24}{min(times['full']):>13.2f}s{min(times['serve']):>13.2f}s")
    print("runs (s): " + json.dumps({w: [round(t, 2) for t in ts] for w, ts in times.items()}))
    for which, image in images.items():
        rows, venv = contents(image, 12)
        listed = ", ".join(f"{name} {mb}" for mb, name in rows)
        print(f"\n{image} ({sizes[which]:,.0f} MB; the venv {venv} MB): {listed}")


if __name__ == "__main__":
    main()
