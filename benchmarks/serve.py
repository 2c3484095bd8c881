"""Benchmark: `mlflow models serve` against `mlpipe serve`: same model, same load, in turn.

The model is the default tuning's best RandomForest: `mlpipe train` runs first in a fresh folder
(or --tracking-uri points at a store that has boston-rf@champion). Each server gets the same
closed loop from wrk (Debian's `wrk`): 16 connections on one wrk thread, single-row
`dataframe_split` requests to /invocations over loopback, after a warm-up. Both servers get the
same number of workers (--workers, default 2 = the cores here). Before the load, both answer the
same 50 rows and the bytes are compared.

With ``--classifier`` the model is a RandomForestClassifier tuned on breast_cancer (`mlpipe train
--data breast_cancer --task classification`), and mlpipe's load goes to /predict, which answers
the label and both classes' probabilities; `mlflow models serve` answers /invocations (labels
only: its pyfunc has no probabilities). The 50 rows are compared on /invocations. ``--family
xgboost`` or ``lightgbm`` tunes that family instead (its ONNX graph is onnxmltools').

Prints requests/s, p50 and p99 latency for both and the throughput ratio.
With ``--categorical`` the model is a forest of a table with categories (benchmarks/common.py's
``categorical_table``: 4 of 12 columns strings, one with 300 categories), served through the
one-hot tables and the forest's ONNX graph.
Usage: python benchmarks/serve.py [--seconds 20] [--workers 2] [--tracking-uri URI]
                                  [--classifier [--family random_forest|xgboost|lightgbm]]
                                  [--categorical]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
from common import BIN, DATA, MODEL, categorical_table, environment

from mlpipe.processes import free_port, stop_group

SHORT = {"random_forest": "rf", "xgboost": "xgb", "lightgbm": "lgbm"}


def start(args: list[str], env: dict[str, str], cwd: str, ready_path: str) -> tuple:
    port = free_port()
    log = open(Path(cwd) / f"server-{port}.log", "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(
        [*args, "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args[0]} exited; see {log.name}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{args} did not become ready")


def stop(proc: subprocess.Popen, log) -> None:
    stop_group(proc.pid, grace=30)
    proc.wait()
    log.close()


def wrk(url: str, body: str, seconds: int, folder: str) -> dict[str, float]:
    script = Path(folder) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    subprocess.run(  # warm-up
        ["wrk", "-t1", "-c16", "-d3s", "-s", str(script), url], check=True, capture_output=True
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out)[1]),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1]),
        "requests": float(re.search(r"(\d+) requests in", out)[1]),
        "errors": float(errors[1]) if errors else 0.0,
        "socket_errors": socket_errors[1] if socket_errors else "",
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def answers(url: str, frame: pd.DataFrame) -> list[bytes]:
    with httpx.Client() as http:
        return [
            http.post(
                url + "/invocations",
                json={"dataframe_split": frame.iloc[[i]].to_dict(orient="split")},
            ).content
            for i in range(len(frame))
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracking-uri", help="a store with the model's champion (else: train it)")
    parser.add_argument("--classifier", action="store_true", help="breast_cancer's classifier")
    parser.add_argument("--family", choices=sorted(SHORT), default="random_forest")
    parser.add_argument(
        "--categorical", action="store_true", help="a regressor of a table with categories"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    folder = tempfile.mkdtemp(prefix="mlpipe-bench-serve-")
    model, train, frame = MODEL, (), pd.read_csv(DATA).drop(columns=["MEDV"])  # RAD, TAX ints
    if args.classifier:
        from sklearn.datasets import load_breast_cancer

        model = f"models:/breast_cancer-{SHORT[args.family]}@champion"
        train = ("--data", "breast_cancer", "--task", "classification", "--family", args.family)
        frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    if args.categorical:  # 4 of 12 columns categorical, one with 300 categories
        table = categorical_table(2000, Path(folder))
        model = f"models:/houses-2000-{SHORT[args.family]}@champion"
        train = ("--data", str(table), "--target", "price", "--family", args.family)
        frame = pd.read_csv(table).drop(columns=["price"]).dropna()
    env = environment(folder, args.tracking_uri, train)
    body = json.dumps({"dataframe_split": frame.iloc[[0]].to_dict(orient="split")})
    mlpipe_path, mlpipe_body = "/invocations", body
    if args.classifier:  # the label and every class's probability
        mlpipe_path, mlpipe_body = "/predict", json.dumps(frame.iloc[0].to_dict())
    servers = {
        "mlflow models serve": (
            [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
             "--host", "127.0.0.1", "--workers", str(args.workers)],
            "/ping",
        ),
        "mlpipe serve": (
            [str(BIN / "mlpipe"), "serve", "--model", model, "--workers", str(args.workers),
             "--no-access-log"],
            "/ready",
        ),
    }  # fmt: skip
    results, replies = {}, {}
    for name, (command, ready) in servers.items():
        proc, url, log = start(command, env, folder, ready)
        try:
            replies[name] = answers(url, frame.iloc[:50])
            if name == "mlpipe serve":
                described = httpx.get(url + "/model", timeout=10).json()
                print(f"mlpipe predictor: {described['predictor']} ({model})", flush=True)
            path, load = (
                (mlpipe_path, mlpipe_body) if name == "mlpipe serve" else ("/invocations", body)
            )
            print(f"{name}: {args.seconds} s of wrk -c16 on {path} ...", flush=True)
            results[name] = wrk(url + path, load, args.seconds, folder)
        finally:
            stop(proc, log)

    identical = replies["mlflow models serve"] == replies["mlpipe serve"]
    print(f"\nsame model, {args.workers} workers each, 16 connections, single-row requests "
          f"(mlpipe: {mlpipe_path})")  # fmt: skip
    print(f"{'server':<22}{'requests/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in results.items():
        print(f"{name:<22}{r['rps']:>12.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['errors']:>8.0f} {r['socket_errors']}")  # fmt: skip
    ratio = results["mlpipe serve"]["rps"] / results["mlflow models serve"]["rps"]
    print(f"throughput ratio mlpipe/mlflow: {ratio:.1f}  (target >= 40)")
    print(f"p99 mlpipe: {results['mlpipe serve']['p99_ms']:.2f} ms  (target <= 10)")
    print(f"identical answers on 50 rows: {identical}")
    shutil.rmtree(folder, ignore_errors=True)
    if not identical:
        raise SystemExit("the two servers answered differently")


if __name__ == "__main__":
    main()
