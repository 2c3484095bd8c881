"""`mlpipe serve` as a real process on a loopback port, serving a model that `mlpipe train`
registered in a real MLflow SQLite store."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import (
    BIN,
    free_port,
    registered_copy,
    render_in_chromium,
    run_mlpipe,
    stop,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]

FEATURES = ["CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO",
            "B", "LSTAT"]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    """A store where `mlpipe train` registered boston-rf version 1 (champion)."""
    root = tmp_path_factory.mktemp("serve")
    uri = registered_copy(trained, root)  # this module registers versions and moves the alias
    frame = pd.read_csv(Path(__file__).parents[2] / "src/mlpipe/data/boston.csv")
    return {"root": root, "uri": uri, "X": frame[FEATURES]}  # as pandas reads it


class Server:
    """A `mlpipe serve` process; stopped (by pid) when the test module ends."""

    def __init__(self, cwd: Path, tracking_uri: str, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(cwd / f"serve-{self.port}.log", "w+b")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [str(BIN / "mlpipe"), "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.url}/ready", self.proc, seconds=120)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def server(store):
    srv = Server(
        store["root"],
        store["uri"],
        "--model",
        "models:/boston-rf@champion",
        "--poll-seconds",
        "1",
        "--max-rows",
        "50",
        "--max-body-bytes",
        "20000",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pyfunc(store):
    import mlflow.pyfunc

    os.environ["MLFLOW_TRACKING_URI"] = store["uri"]
    try:
        yield mlflow.pyfunc.load_model("models:/boston-rf@champion")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")


def post(server, path, body, content_type="application/json", **headers):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(
        server.url + path, content=data, headers={"Content-Type": content_type, **headers}
    )


def test_operations_endpoints(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ping").status_code == 200
    assert httpx.get(f"{server.url}/ready").json() == {"ready": True, "model_version": "1"}
    model = httpx.get(f"{server.url}/model").json()
    assert (model["name"], model["version"], model["alias"]) == ("boston-rf", "1", "champion")
    assert model["predictor"] == "onnx" and model["fallback_reason"] is None
    assert model["parity"]["max_abs_diff"] == 0.0
    assert "held-out sample" in model["parity"]["sample"]
    assert [c["name"] for c in model["signature"]["inputs"]] == FEATURES
    assert len(model["run_id"]) == 32
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert spec["components"]["schemas"]["Record"]["required"] == FEATURES


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_the_api_docs_render_offline_in_chromium(server, tmp_path, page):
    """Swagger UI and ReDoc come from the package: no CDN (this machine reaches none)."""
    html = httpx.get(f"{server.url}/{page}").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/static-offline-docs/") for a in assets), assets
    for asset in assets:
        assert httpx.get(server.url + asset).status_code == 200, asset
    dom = render_in_chromium(f"{server.url}/{page}", tmp_path / f"{page}.png", wait_ms=20000)
    # the operations themselves, rendered from /openapi.json
    for path in ("/predict", "/invocations", "/ready"):
        marker = f'data-path="{path}"' if page == "docs" else f">{path}<"
        assert marker in dom, (path, dom[-2000:])


def test_invocations_answers_equal_mlflow_pyfunc_for_every_format(server, store, pyfunc):
    X = store["X"].iloc[:7]
    expected = json.dumps({"predictions": np.asarray(pyfunc.predict(X)).tolist()})
    records = X.to_dict(orient="records")
    bodies = {
        "dataframe_split": {"dataframe_split": X.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs-columns": {"inputs": X.to_dict(orient="list")},
        "with-params": {"dataframe_records": records, "params": {}},
    }
    for name, body in bodies.items():
        response = post(server, "/invocations", body)
        assert response.status_code == 200, (name, response.text)
        assert response.content == expected.encode(), name
    csv = post(server, "/invocations", X.to_csv(index=False), "text/csv; charset=utf-8")
    assert csv.content == expected.encode()
    parquet = post(server, "/invocations", X.to_parquet(), "application/vnd.apache.parquet")
    assert parquet.content == expected.encode()


def test_predict_takes_instances_a_list_or_one_record(server, pyfunc, store):
    X = store["X"].iloc[:3]
    expected = np.asarray(pyfunc.predict(X)).tolist()
    records = X.to_dict(orient="records")
    for body in ({"instances": records}, records):
        answer = post(server, "/predict", body).json()
        assert answer["predictions"] == expected
        assert answer["model"] == {"name": "boston-rf", "version": "1", "alias": "champion"}
    assert post(server, "/predict", records[0]).json()["predictions"] == expected[:1]


ROW = {name: 1.0 for name in FEATURES}
BAD_INPUTS = [
    ("missing feature", {k: v for k, v in ROW.items() if k != "RM"}, 422, "'RM': missing"),
    ("unknown feature", {**ROW, "ROOMS": 3}, 422, "'ROOMS': unknown feature"),
    ("wrong type", {**ROW, "RM": [6]}, 422, "'RM': is a list"),
    ("string", {**ROW, "RM": "6.5"}, 422, "'RM': is a string"),
    ("NaN literal", '{"instances": [' + json.dumps({**ROW, "RM": float("nan")}) + "]}", 422,
     "'RM': is nan"),
    ("Infinity literal", "[" + json.dumps({**ROW, "AGE": float("-inf")}) + "]", 422,
     "'AGE': is -inf"),
    ("NaN string", {**ROW, "RM": "NaN"}, 422, "'RM': is the string 'NaN'"),
    ("Infinity string", {**ROW, "RM": "Infinity"}, 422, "is the string 'Infinity'"),
    ("null", {**ROW, "LSTAT": None}, 422, "'LSTAT': is null"),
    ("empty list", {"instances": []}, 422, "no rows"),
    ("non-list", {"instances": 5}, 422, "expected a list of records"),
    ("nested", "[" * 100_000 + "]" * 100_000, 413, "at most 20000"),
    ("deep but small", "[" * 5000 + "]" * 5000, 400, "nested too deeply"),
    ("invalid JSON", '{"instances": [', 400, "invalid JSON"),
    ("too many rows", {"instances": [ROW] * 51}, 413, "at most 50 rows"),
    ("not UTF-8", b"\xff\xfe{}", 400, "not UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "words"), [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])  # fmt: skip
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, body, status, words):
    response = post(server, "/predict", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert post(server, "/predict", ROW).status_code == 200


def test_media_types_and_sizes(server):
    assert post(server, "/predict", ROW, "text/plain").status_code == 415
    assert post(server, "/predict", ROW, "application/json; charset=latin-1").status_code == 415
    no_type = httpx.post(f"{server.url}/predict", content=json.dumps(ROW))
    assert no_type.status_code == 415
    big = post(server, "/invocations", {"dataframe_records": [ROW] * 200})
    assert big.status_code == 413
    assert big.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    # a chunked body with no Content-Length is cut off at the limit too
    chunked = httpx.post(
        f"{server.url}/predict",
        content=iter([b"[" + b" " * 15000, b" " * 15000 + b"]"]),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413
    mlflow_style = post(server, "/invocations", {"records": [ROW]})
    assert mlflow_style.status_code == 400
    assert mlflow_style.json()["error_code"] == "BAD_REQUEST"
    csv = post(server, "/invocations", "CRIM,ZN\nx,1\n", "text/csv")
    assert csv.status_code == 422 and "'CRIM': is a string ('x')" in csv.json()["message"]


def test_metrics(server):
    post(server, "/predict", ROW)
    post(server, "/predict", {**ROW, "RM": "x"})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'mlpipe_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert 'mlpipe_http_requests_total{endpoint="/predict",method="POST",status="422"}' in text
    assert 'mlpipe_http_request_duration_seconds_bucket{endpoint="/predict",le="0.005"' in text
    assert 'mlpipe_predictions_total{model_version="1",predictor="onnx"}' in text
    assert 'mlpipe_model_events_total{event="loaded",model_version="1"} 1.0' in text
    access = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert {"path": "/predict", "status": 422} in [
        {"path": a["path"], "status": a["status"]} for a in access
    ]
    ready = [a for a in access if a["path"] == "/ready" and a["status"] == 200]
    assert ready and {a["model_version"] for a in ready} == {"1"}  # the version being served


def test_schemathesis_finds_no_server_error(server, tmp_path):
    result = subprocess.run(
        [str(BIN / "st"), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "40", "--seed", "1", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # cache out of the tree
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
    assert re.search(r"Tested: 7\b", result.stdout)  # every operation, the predict routes too
    assert int(re.search(r"(\d+) generated, \1 passed", result.stdout)[1]) > 300


def _register(store, model, columns, name="boston-rf"):
    """Register one more version with mlpipe's tracker (the ONNX export included)."""
    from mlpipe.tracking import Tracker, infer_signature

    X = store["X"][columns]
    tracker = Tracker.connect(store["uri"], "serve-tests")
    run_id = tracker.start_search("serve-test", {}, {})
    _, version = tracker.log_model(
        run_id, "random_forest", model, X.head(5), infer_signature(X, model.predict(X)), name,
        held_out=X.tail(50),
    )  # fmt: skip
    tracker.end_search(run_id, ok=True)
    return tracker, version


def test_alias_move_is_followed_with_no_failed_request(server, store):
    from sklearn.ensemble import RandomForestRegressor

    y = pd.read_csv(Path(__file__).parents[2] / "src/mlpipe/data/boston.csv")["MEDV"]
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=7).fit(store["X"], y)
    tracker, version = _register(store, model, FEATURES)
    row = store["X"].iloc[[3]]
    by_version = {"2": model.predict(row).tolist()}
    seen, failures, stop_flag = [], [], threading.Event()

    def client():
        with httpx.Client() as http:
            while not stop_flag.is_set():
                r = http.post(f"{server.url}/predict", json=row.to_dict(orient="records"))
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    body = r.json()
                    seen.append((body["model"]["version"], body["predictions"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    moved = time.monotonic()
    tracker.set_alias("boston-rf", "champion", version)
    while time.monotonic() - moved < 60 and (not seen or seen[-1][0] != version):
        time.sleep(0.2)
    time.sleep(1)
    stop_flag.set()
    for t in threads:
        t.join()
    assert failures == []
    assert seen[-1][0] == version == "2"
    first_v2 = next(i for i, (v, _) in enumerate(seen) if v == "2")
    assert {v for v, _ in seen[first_v2:]} <= {"1", "2"}
    by_version["1"] = next(p for v, p in seen if v == "1")
    assert all(p == by_version[v] for v, p in seen), "a response mixed two versions"
    model_info = httpx.get(f"{server.url}/model").json()
    assert model_info["version"] == "2" and model_info["predictor"] == "onnx"
    text = httpx.get(f"{server.url}/metrics").text
    assert 'mlpipe_model_events_total{event="swapped",model_version="2"} 1.0' in text


def test_incompatible_version_is_refused_and_the_old_one_keeps_serving(server, store):
    from sklearn.ensemble import RandomForestRegressor

    y = pd.read_csv(Path(__file__).parents[2] / "src/mlpipe/data/boston.csv")["MEDV"]
    few = FEATURES[:4]
    model = RandomForestRegressor(n_estimators=3, random_state=0).fit(store["X"][few], y)
    tracker, version = _register(store, model, few)
    served = httpx.get(f"{server.url}/model").json()["version"]
    tracker.set_alias("boston-rf", "champion", version)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if version in httpx.get(f"{server.url}/model").json()["refused_versions"]:
            break
        time.sleep(0.3)
    info = httpx.get(f"{server.url}/model").json()
    assert info["version"] == served
    assert "differ from the served version's" in info["refused_versions"][version]
    assert post(server, "/predict", ROW).status_code == 200
    text = httpx.get(f"{server.url}/metrics").text
    assert f'mlpipe_model_events_total{{event="incompatible",model_version="{version}"}}' in text
    assert "not served (incompatible)" in server.output()


@pytest.fixture(scope="module")
def model_folder(store):
    """The model folder `mlpipe train` wrote beside its results."""
    (folder,) = (store["root"] / "artifacts").glob("*/model")
    return folder


def test_local_folder_with_token_and_graceful_shutdown(store, model_folder):
    srv = Server(
        store["root"], store["uri"], "--model", str(model_folder), "--drain-seconds", "2",
        env={"MLPIPE_SERVE_TOKEN": "s3cret"},
    )  # fmt: skip
    try:
        assert post(srv, "/predict", ROW).status_code == 401
        assert post(srv, "/predict", ROW, Authorization="Bearer wrong").status_code == 401
        ok = post(srv, "/predict", ROW, Authorization="Bearer s3cret")
        assert ok.status_code == 200 and ok.json()["model"]["version"] is None
        assert httpx.get(f"{srv.url}/health").status_code == 200  # no token needed
        assert "s3cret" not in httpx.get(f"{srv.url}/model").text

        # a request in flight: headers and half the body sent, then SIGTERM
        body = json.dumps(ROW).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer s3cret\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10]
        )
        time.sleep(0.3)
        os.kill(srv.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(f"{srv.url}/ready").status_code == 503
        sock.sendall(body[10:])
        answer = sock.recv(65536).decode()
        sock.close()
        assert answer.startswith("HTTP/1.1 200"), answer
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit is by SIGTERM
        assert srv.proc.wait(timeout=30) == -signal.SIGTERM
        log = srv.output()
        assert "draining for 2.0 s" in log
        assert "Application shutdown complete" in log
    finally:
        srv.stop()


def test_fast_path_falls_back_to_native_when_parity_fails(model_folder, tmp_path):
    from mlpipe.predictor import load_model, parse_model_uri

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    # the logged graph of a different forest: it loads, but its predictions differ
    from sklearn.ensemble import RandomForestRegressor

    from mlpipe.onnx_export import to_onnx

    other = RandomForestRegressor(n_estimators=2, random_state=0).fit(np.eye(13), np.arange(13))
    (folder / "onnx" / "model.onnx").write_bytes(to_onnx(other, 13))
    loaded = load_model(parse_model_uri(str(folder)))
    assert loaded.predictor.kind == "native"
    assert "ONNX predictions differ from the native model" in loaded.fallback_reason
    (folder / "onnx" / "model.onnx").write_bytes(b"not a graph")
    loaded = load_model(parse_model_uri(str(folder)))
    assert loaded.predictor.kind == "native"
    assert "onnxruntime cannot load" in loaded.fallback_reason


def test_the_fast_path_is_checked_on_recorded_predictions_without_the_native_model(
    store, model_folder, tmp_path
):
    """A version registered by `mlpipe train` carries the native predictions of its held-out
    sample: the ONNX graph is checked on them, and the native model (skops, scikit-learn) is
    not loaded until something predicts with it."""
    from mlpipe.predictor import load_model, open_model, parse_model_uri

    loaded = open_model("models:/boston-rf/1", store["uri"])
    assert loaded.predictor.kind == "onnx" and loaded.parity.max_abs_diff == 0.0
    assert "recorded at registration" in loaded.parity.sample
    assert not loaded.native.loaded
    # on first use it loads, from the registry again (the download it came from is gone)
    X = store["X"].to_numpy(np.float64)
    np.testing.assert_array_equal(loaded.native.predict(X), loaded.predict(X))
    assert loaded.native.loaded

    # a process that scores with the fast path never imports scikit-learn
    check = (
        "import sys; from mlpipe.predictor import open_model; "
        f"m = open_model('models:/boston-rf/1', {store['uri']!r}); "
        "assert m.predictor.kind == 'onnx'; "
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'sklearn', 'skops'}))"
    )
    done = subprocess.run([str(BIN / "python"), "-c", check], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr

    # predictions recorded for another logged model are not trusted: the native model predicts
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    record_file = folder / "onnx" / "parity_sample.json"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "model_id": "m-0"}))
    other = load_model(parse_model_uri(str(folder)))
    assert other.predictor.kind == "onnx" and other.native.loaded
    assert other.parity.sample == "input example + held-out sample"


def test_a_pickled_model_is_refused_unless_allowed(tmp_path):
    import mlflow.sklearn
    from sklearn.ensemble import RandomForestRegressor

    from mlpipe.errors import UserError
    from mlpipe.predictor import load_model, parse_model_uri

    X = pd.DataFrame(np.eye(3), columns=["a", "b", "c"])
    model = RandomForestRegressor(n_estimators=2, random_state=0).fit(X, [1.0, 2.0, 3.0])
    from mlflow.models import infer_signature

    mlflow.sklearn.save_model(
        model, tmp_path / "m", serialization_format="cloudpickle",
        signature=infer_signature(X, model.predict(X)), input_example=X.head(2),
    )  # fmt: skip
    ref = parse_model_uri(str(tmp_path / "m"))
    with pytest.raises(UserError, match="--allow-pickle"):
        load_model(ref)
    assert load_model(ref, allow_pickle=True).predictor.kind == "onnx"


def test_a_port_in_use_is_refused_before_the_model_loads(store, server):
    started = time.monotonic()
    result = run_mlpipe(
        ["serve", "--model", "models:/boston-rf@champion", "--port", str(server.port)],
        store["root"], MLFLOW_TRACKING_URI=store["uri"],
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"error: port {server.port} on 127.0.0.1 is in use (another server?): stop it, or serve "
        "on another with --port\n"
    )
    assert "serving" not in result.stdout + result.stderr and time.monotonic() - started < 30
    assert httpx.get(f"{server.url}/ready").status_code == 200  # the first server is unharmed


def test_serve_fails_fast_on_a_model_that_does_not_exist(store):
    result = run_mlpipe(
        ["serve", "--model", "models:/no-such-model@champion"], store["root"],
        MLFLOW_TRACKING_URI=store["uri"],
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: model models:/no-such-model@champion")
