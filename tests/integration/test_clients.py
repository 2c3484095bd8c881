"""mlpipe driven by clients nobody on this project wrote: MLflow's pyfunc API on the table as
pandas reads it, `mlflow models serve` (a real process), MLflow's own scoring-server client,
and plain HTTP clients (requests, urllib, curl) sending a body over the limit. The model is the
one `mlpipe train` registers; a version logged as mlpipe did before integer columns kept their
type (every column double) is served too."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from conftest import BIN, background, free_port, registered_copy, run_mlpipe, system_tool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("restore_mlflow_uris")]

BOSTON = Path(__file__).parents[2] / "src/mlpipe/data/boston.csv"
INTEGER_COLUMNS = ["CHAS", "RAD", "TAX"]
LIMIT = 20_000  # the server's --max-body-bytes


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained):
    """`mlpipe train` registered boston-rf version 1 (champion); version 2 is the same kind of
    model logged the way mlpipe logged models before (every column double), alias `legacy`."""
    from sklearn.ensemble import RandomForestRegressor

    from mlpipe.tracking import Tracker, infer_signature

    root = tmp_path_factory.mktemp("clients")
    uri = registered_copy(trained, root)  # this module registers versions and moves aliases
    table = pd.read_csv(BOSTON)
    X = table.drop(columns=["MEDV"])
    floats = X.astype("float64")
    legacy = RandomForestRegressor(n_estimators=7, max_depth=4, random_state=3).fit(
        floats, table["MEDV"]
    )
    tracker = Tracker.connect(uri, "legacy-models")
    run_id = tracker.start_search("legacy", {}, {})
    _, version = tracker.log_model(
        run_id, "random_forest", legacy, floats.head(5),
        infer_signature(floats, legacy.predict(floats)), "boston-rf", held_out=floats.tail(50),
    )  # fmt: skip
    tracker.end_search(run_id, ok=True)
    tracker.set_alias("boston-rf", "legacy", version)
    assert version == "2"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return {"root": root, "uri": uri, "X": X, "y": table["MEDV"], "tracker": tracker}


@pytest.fixture(scope="module")
def pyfunc(store):
    return mlflow.pyfunc.load_model("models:/boston-rf@champion")


@pytest.fixture(scope="module")
def server(store):
    """`mlpipe serve` of the champion, following its alias every second."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlpipe"), "serve", "--model", "models:/boston-rf@champion",
            "--port", str(port), "--poll-seconds", "1", "--max-body-bytes", str(LIMIT)]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    log = store["root"] / "serve.log"
    with background(args, log, f"{url}/ready", cwd=store["root"], env=env) as proc:
        yield {"url": url, "port": port, "pid": proc.pid}


def test_the_signature_keeps_the_tables_integer_columns(pyfunc, store):
    types = {c.name: c.type.name for c in pyfunc.metadata.get_input_schema().inputs}
    assert {c for c, t in types.items() if t == "long"} == set(INTEGER_COLUMNS)
    assert {t for c, t in types.items() if c not in INTEGER_COLUMNS} == {"double"}
    assert store["X"].dtypes[INTEGER_COLUMNS].tolist() == [np.dtype("int64")] * 3
    example = json.loads(
        (next((store["root"] / "artifacts").glob("*/model")) / "input_example.json").read_text()
    )
    columns = example["columns"]
    assert all(isinstance(row[columns.index("RAD")], int) for row in example["data"])


def test_pyfunc_mlflow_models_serve_and_mlpipe_serve_agree_on_the_table(pyfunc, store, server):
    """The bundled CSV as pandas reads it through pyfunc; the same rows as integer JSON through
    `mlflow models serve` and `mlpipe serve`; as integral floats through `mlpipe serve`."""
    from mlpipe.predictor import open_model

    X = store["X"]
    expected = np.asarray(pyfunc.predict(X))
    native = open_model("models:/boston-rf@champion", store["uri"], fast=False)
    np.testing.assert_array_equal(native.predict(X.to_numpy(np.float64)), expected)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/boston-rf@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{BIN}:{os.environ['PATH']}"}
    integers = json.dumps({"dataframe_split": X.iloc[:40].to_dict(orient="split")})
    assert '"RAD"' in integers and ", 296, " in integers  # TAX of the first row, as an integer
    floats = json.dumps({"dataframe_split": X.iloc[:40].astype("float64").to_dict(orient="split")})
    headers = {"Content-Type": "application/json"}
    with background(args, store["root"] / "mlflow-serve.log", f"{url}/ping", env=env):
        theirs = httpx.post(f"{url}/invocations", content=integers, headers=headers, timeout=60)
    assert theirs.status_code == 200, theirs.text
    for body in (integers, floats):
        ours = httpx.post(f"{server['url']}/invocations", content=body, headers=headers)
        assert ours.status_code == 200, ours.text
        assert ours.content == theirs.content
    assert json.loads(theirs.content)["predictions"] == expected[:40].tolist()


def test_score_and_stream_answer_as_pyfunc_for_integers_and_integral_floats(
    pyfunc, store, tmp_path, client, new_streams
):
    from mlpipe.batch import score as scoring
    from mlpipe.predictor import open_model
    from mlpipe.stream.handler import StreamHandler
    from mlpipe.stream.kinesis import read
    from mlpipe.stream.ledger import SqliteLedger

    X = store["X"]
    expected = np.asarray(pyfunc.predict(X))
    model = open_model("models:/boston-rf@champion", store["uri"])
    as_floats = X.astype("float64")
    as_floats.to_csv(tmp_path / "floats.csv", index=False, float_format="%.6f")  # 1.000000
    assert ",296.000000," in (tmp_path / "floats.csv").read_text()
    for name, write in [
        ("table.csv", lambda p: X.to_csv(p, index=False)),  # the bundled file's own values
        ("floats.csv", None),
        ("table.parquet", lambda p: X.to_parquet(p)),  # int64 columns
        ("floats.parquet", lambda p: as_floats.to_parquet(p)),  # double columns
    ]:
        if write is not None:
            write(tmp_path / name)
        out = tmp_path / f"{name}.scored.parquet"
        summary = scoring.score(model, tmp_path / name, out)
        assert summary.scored == len(X) and summary.rejected == 0, name
        np.testing.assert_array_equal(pd.read_parquet(out)["prediction"], expected, err_msg=name)

    (output,) = new_streams("clients-out")
    handler = StreamHandler(
        model=model,
        kinesis=client,
        output=output,
        ledger=SqliteLedger(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)),
    )
    rows = [
        {"id": f"{kind}{i}", **frame.iloc[i].to_dict()}
        for kind, frame in (("int", X.astype(object)), ("float", as_floats))
        for i in range(20)
    ]
    assert isinstance(rows[0]["RAD"], int) and isinstance(rows[20]["RAD"], float)
    event = {"Records": [aws_kinesis_record(i, row) for i, row in enumerate(rows)]}
    assert handler(event) == {"batchItemFailures": []}
    got = {
        (r := json.loads(record["Data"]))["id"]: r["prediction"] for record in read(client, output)
    }
    for i in range(20):
        assert got[f"int{i}"] == got[f"float{i}"] == expected[i]


def aws_kinesis_record(n: int, payload: dict) -> dict:
    """A record as AWS documents Lambda's Kinesis events."""
    sequence = f"49590338271490256608559692538361571095921575989136588{n:03d}"
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": str(payload["id"]),
            "sequenceNumber": sequence,
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000006:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
    }


def test_a_file_with_integer_features_and_an_integer_target_round_trips(store, servers, tmp_path):
    from mlpipe.batch import score as scoring
    from mlpipe.predictor import open_model

    table = pd.read_csv(BOSTON).assign(MEDV=lambda t: t["MEDV"].round().astype("int64"))
    table["AGE"] = table["AGE"].round().astype("int32")
    table.to_parquet(tmp_path / "houses.parquet")
    table.to_csv(tmp_path / "houses.csv", index=False)
    spec = {
        "registry": {"model_name": "houses-int"},
        "data": {"source": str(tmp_path / "houses.parquet"), "target": "MEDV"},
        "search": {"params": {"n_estimators": [10], "max_depth": [5]}},
        "artifacts_dir": str(tmp_path / "artifacts"),
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {"PREFECT_API_URL": servers["PREFECT_API_URL"], "MLFLOW_TRACKING_URI": store["uri"]}
    result = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], tmp_path, **env)
    assert result.returncode == 0, result.stderr

    model = mlflow.pyfunc.load_model("models:/houses-int@champion")
    types = {c.name: c.type.name for c in model.metadata.get_input_schema().inputs}
    # an int32 column is declared long: pyfunc takes the Parquet file (int32) and its CSV (int64)
    assert (types["RAD"], types["AGE"], types["RM"]) == ("long", "long", "double")
    for read in (pd.read_parquet, pd.read_csv):
        features = read(tmp_path / f"houses.{read.__name__.removeprefix('read_')}")
        expected = np.asarray(model.predict(features.drop(columns=["MEDV"])))
        ours = open_model("models:/houses-int@champion", store["uri"])
        suffix = read.__name__.removeprefix("read_")
        out = tmp_path / f"scored-{suffix}.parquet"
        scoring.score(ours, tmp_path / f"houses.{suffix}", out)
        np.testing.assert_array_equal(pd.read_parquet(out)["prediction"], expected)


def test_mlflows_scoring_server_client_talks_to_mlpipe_serve(server, pyfunc, store):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    client = ScoringServerClient("127.0.0.1", server["port"])
    client.wait_server_ready(timeout=30)
    assert client.get_version() == mlflow.__version__
    X = store["X"].iloc[:25]  # the table's own dtypes
    answer = client.invoke(X).get_predictions(predictions_format="ndarray")
    np.testing.assert_array_equal(np.asarray(answer).ravel(), pyfunc.predict(X))
    assert httpx.get(f"{server['url']}/model").json()["version"] == "1"  # mlpipe's own


def memory(pid: int) -> dict[str, int]:
    """The process' resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


def test_a_body_over_the_limit_gets_a_413_every_client_can_read(server, tmp_path):
    url = f"{server['url']}/predict"
    big = b'{"instances": [' + b" " * 60_000_000 + b"]}"
    reset_peak(server["pid"])
    before = memory(server["pid"])["VmRSS"]
    answer = requests.post(url, data=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert f"at most {LIMIT} are accepted" in answer.json()["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        request = urllib.request.Request(url, big, {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"]["status"] == 413
    # the server read 120 MB and held none of it, even for a moment
    assert memory(server["pid"])["VmHWM"] - before < 20 * 2**20

    (tmp_path / "big.json").write_bytes(big)
    curl = system_tool("curl")
    done = subprocess.run(
        [curl, "-s", "-o", str(tmp_path / "answer"), "-w", "%{http_code} %{size_upload}",
         "-H", "Content-Type: application/json", "-H", "Expect: 100-continue",
         "--data-binary", f"@{tmp_path / 'big.json'}", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout == "413 0", done.stdout + done.stderr  # answered before any byte was sent
    assert json.loads((tmp_path / "answer").read_text())["error"]["status"] == 413


def test_other_clients_are_answered_while_a_large_body_is_thrown_away(server):
    """A client trickles 8 MB over the limit for ~2 s; small requests are answered meanwhile,
    and the slow client reads its 413 at the end."""
    row = {c: 1.0 for c in ["CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD",
                            "TAX", "PTRATIO", "B", "LSTAT"]}  # fmt: skip
    size = 8_000_000
    sock = socket.create_connection(("127.0.0.1", server["port"]))
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    sent, answered = threading.Event(), []

    def trickle() -> None:
        for _ in range(size // 400_000):
            sock.sendall(b" " * 400_000)
            time.sleep(0.1)
        sent.set()

    thread = threading.Thread(target=trickle)
    thread.start()
    with httpx.Client() as http:
        while not sent.is_set():
            answered.append(http.post(f"{server['url']}/predict", json=row).status_code)
            time.sleep(0.05)
    thread.join()
    reply = sock.recv(65536).decode()
    sock.close()
    assert len(answered) >= 10 and set(answered) == {200}
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert '"status": 413' in reply


def test_a_version_logged_before_integer_columns_kept_their_type_serves(server, store):
    """Version 2 declares every column double, as mlpipe's models did before: it loads, the
    server following the alias takes it (same features), and answers integers and floats."""
    from mlpipe.predictor import open_model

    legacy = mlflow.pyfunc.load_model("models:/boston-rf@legacy")
    assert {c.type.name for c in legacy.metadata.get_input_schema().inputs} == {"double"}
    X = store["X"].iloc[:30]
    expected = np.asarray(legacy.predict(X.astype("float64")))
    loaded = open_model("models:/boston-rf@legacy", store["uri"])
    assert loaded.predictor.kind == "onnx"
    np.testing.assert_array_equal(loaded.predict(X.to_numpy(np.float64)), expected)

    # the champion/challenger gate scores a champion of either kind on the float64 split
    from mlpipe.predictor import load_pyfunc, predict_frame

    floats = X.astype("float64")
    np.testing.assert_array_equal(
        predict_frame(load_pyfunc("models:/boston-rf/2"), floats), expected
    )
    current = mlflow.pyfunc.load_model("models:/boston-rf/1")
    np.testing.assert_array_equal(
        predict_frame(load_pyfunc("models:/boston-rf/1"), floats), current.predict(X)
    )

    tracker = store["tracker"]
    tracker.set_alias("boston-rf", "champion", "2")
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{server['url']}/model").json()["version"] != "2":
            assert time.monotonic() < deadline, httpx.get(f"{server['url']}/model").text
            time.sleep(0.3)
        for frame in (X, X.astype("float64")):
            body = {"dataframe_records": frame.to_dict(orient="records")}
            answer = httpx.post(f"{server['url']}/invocations", json=body)
            assert answer.json()["predictions"] == expected.tolist()
    finally:
        tracker.set_alias("boston-rf", "champion", "1")


@pytest.fixture(scope="module")
def houses(tmp_path_factory, servers):
    """`mlpipe train` on a table as users have it (strings, a category, booleans, empty cells,
    an id, missing targets): houses-rf version 1, the pipeline of one-hot, a target encoder (of
    the 40 shops) and the forest."""
    from tables import make_table

    root = tmp_path_factory.mktemp("houses")
    table = make_table(300, seed=4)
    table.to_csv(root / "houses.csv", index=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    grid = {"n_estimators": [10, 20], "min_samples_leaf": [1, 3]}
    spec = {
        "n_jobs": 1,
        "data": {"source": "houses.csv", "target": "y"},
        "search": {"params": grid},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {"PREFECT_API_URL": servers["PREFECT_API_URL"], "MLFLOW_TRACKING_URI": uri}
    result = run_mlpipe(["train", "--config", "spec.yaml", "--quiet"], root, **env)
    assert result.returncode == 0, result.stderr
    assert "order_id left out of the features" in result.stdout
    rows = pd.read_csv(root / "houses.csv").drop(columns=["y"]).head(60)
    rows.loc[0, "city"] = "tokyo"  # a category training never saw
    rows.loc[1, "size"] = None
    return {"root": root, "uri": uri, "rows": rows, "model": "models:/houses-rf@champion"}


def test_a_model_of_categories_answers_the_same_row_everywhere(
    houses, tmp_path, client, new_streams, postgres, monkeypatch
):
    """The same rows, as pandas reads the CSV, through MLflow's pyfunc, `mlflow models serve`,
    `mlpipe serve` (/predict and /invocations, JSON records, split and CSV; the ONNX fast
    path), `mlpipe score` (CSV, Parquet and a PostgreSQL table: text, boolean, bigint and NULL
    columns) and the Lambda handler: the same answers, row for row; the unseen category and
    the missing values are counted, never refused."""
    import psycopg

    from mlpipe.batch import score as scoring
    from mlpipe.batch.locations import resolve_ends
    from mlpipe.predictor import open_model
    from mlpipe.stream.handler import StreamHandler
    from mlpipe.stream.kinesis import read
    from mlpipe.stream.ledger import SqliteLedger

    mlflow.set_tracking_uri(houses["uri"])
    mlflow.set_registry_uri(houses["uri"])
    rows = houses["rows"]
    expected = np.asarray(mlflow.pyfunc.load_model(houses["model"]).predict(rows))
    inputs = {c.name: (c.type.name, c.required) for c in mlflow.models.get_model_info(
        houses["model"]).signature.inputs.inputs}  # fmt: skip
    assert inputs["city"] == ("string", False) and inputs["flag"] == ("boolean", True)
    assert "order_id" not in inputs
    records = [{k: (None if pd.isna(v) else v) for k, v in r.items()}
               for r in rows.drop(columns=["order_id"]).to_dict(orient="records")]  # fmt: skip
    split = {
        "dataframe_split": {
            "columns": list(records[0]),
            "data": [list(r.values()) for r in records],
        }
    }
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": houses["uri"],
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "mlpipe"), "serve", "--model", houses["model"], "--port", str(port)]
    csv = rows.drop(columns=["order_id"]).to_csv(index=False)
    with background(
        args, houses["root"] / "serve.log", f"{url}/ready", cwd=houses["root"], env=env
    ):
        answers = {
            "predict": httpx.post(f"{url}/predict", json=records).json()["predictions"],
            "invocations": httpx.post(f"{url}/invocations", json=split).json()["predictions"],
            "csv": httpx.post(f"{url}/invocations", content=csv,
                              headers={"Content-Type": "text/csv"}).json()["predictions"],
        }  # fmt: skip
        metrics = httpx.get(f"{url}/metrics").text
        described = httpx.get(f"{url}/model").json()
    for name, answer in answers.items():
        np.testing.assert_array_equal(answer, expected, err_msg=name)
    assert 'mlpipe_unseen_categories_total{feature="city"} 3.0' in metrics  # once per route
    # the forest's fast path: codes to one-hot columns and target encodings (the 40 shops) by
    # table, then the forest's graph
    assert described["predictor"] == "onnx" and described["parity"]["max_abs_diff"] == 0.0

    mlflow_port = free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    args = [str(BIN / "mlflow"), "models", "serve", "-m", houses["model"], "--env-manager",
            "local", "--host", "127.0.0.1", "--port", str(mlflow_port)]  # fmt: skip
    with background(args, houses["root"] / "mlflow-serve.log", f"{mlflow_url}/ping", env=env):
        theirs = httpx.post(f"{mlflow_url}/invocations", json=split, timeout=60)
    assert theirs.status_code == 200, theirs.text
    np.testing.assert_array_equal(theirs.json()["predictions"], expected)

    model = open_model(houses["model"], houses["uri"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    rows.to_parquet(tmp_path / "rows.parquet")
    for name in ("rows.csv", "rows.parquet"):
        summary = scoring.score(model, tmp_path / name, tmp_path / f"{name}.out.parquet")
        assert summary.rejected == 0 and summary.unseen == {"city": 1}, name
        assert (
            summary.missing
            == rows.drop(columns="order_id").isna().sum().loc[lambda s: s > 0].to_dict()
        )
        scored = pd.read_parquet(tmp_path / f"{name}.out.parquet")["prediction"]
        np.testing.assert_array_equal(scored, expected, err_msg=name)
    columns = {"city": "text", "size": "text", "flag": "boolean", "zone": "bigint",
               "x": "float8", "shop": "text", "order_id": "text"}  # fmt: skip
    with psycopg.connect(postgres["url"].replace("+psycopg", ""), password=postgres["password"],
                         autocommit=True) as conn:  # fmt: skip
        conn.execute(f"CREATE TABLE houses ({', '.join(f'{c} {t}' for c, t in columns.items())})")
        copy_in = f"COPY houses ({', '.join(columns)}) FROM STDIN (FORMAT csv)"
        with conn.cursor().copy(copy_in) as copy:
            copy.write(rows[list(columns)].to_csv(index=False, header=False))  # empty: NULL
    monkeypatch.setenv("PGPASSWORD", postgres["password"])
    source, output = resolve_ends(postgres["url"], str(tmp_path / "pg.out.parquet"), "houses")
    summary = scoring.score(model, source, output, id_columns=["order_id"])
    assert summary.rejected == 0 and summary.unseen == {"city": 1}
    scored = pd.read_parquet(tmp_path / "pg.out.parquet").set_index("order_id")["prediction"]
    np.testing.assert_array_equal(scored[rows["order_id"]], expected, err_msg="postgresql")

    (output,) = new_streams("houses-out")
    handler = StreamHandler(
        model=model, kinesis=client, output=output,
        ledger=SqliteLedger(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)),
    )  # fmt: skip
    event = {
        "Records": [aws_kinesis_record(i, {"id": f"r{i}", **r}) for i, r in enumerate(records)]
    }
    assert handler(event) == {"batchItemFailures": []}
    got = {
        (r := json.loads(record["Data"]))["id"]: r["prediction"] for record in read(client, output)
    }
    assert [got[f"r{i}"] for i in range(len(records))] == expected.tolist()
