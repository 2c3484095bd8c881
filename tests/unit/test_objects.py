"""Batch scoring from and to S3, against moto's S3 server on a loopback port (real HTTP, boto3
as against AWS): a prefix read like a folder, outputs that appear whole through a multipart
upload or not at all, open uploads of killed runs aborted by the next run, and every bad
location refused with one line before anything is written."""

from __future__ import annotations

import io
import socket

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlpipe.batch import multipart, objects
from mlpipe.batch import score as scoring
from mlpipe.batch.locations import resolve_ends
from mlpipe.cli import app
from mlpipe.errors import DataError, RejectLimitError

runner = CliRunner()


@pytest.fixture
def store(s3):
    return objects.ObjectStore.from_env()


def put(s3, bucket: str, key: str, frame: pd.DataFrame) -> None:
    body = io.BytesIO()
    if key.endswith(".csv"):
        body.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(body)
    s3["client"].put_object(Bucket=bucket, Key=key, Body=body.getvalue())


def read(s3, bucket: str, key: str) -> pd.DataFrame:
    body = s3["client"].get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3["client"].list_objects_v2(Bucket=bucket).get("Contents", [])]


def open_uploads(s3, bucket: str) -> list[str]:
    return [u["Key"] for u in s3["client"].list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def score(model, store, input: str, output: str, **kwargs):
    source, target = resolve_ends(input, output, store=store)
    return scoring.score(model, source, target, **kwargs)


def test_a_prefix_scores_like_the_same_local_folder_with_rejects_beside(
    s3, store, frame, model, tmp_path
):
    bucket = s3["bucket"]()
    bad = frame.copy()
    bad.loc[7, "RM"] = float("nan")
    put(s3, bucket, "in/date=2026-12-01/part-0.parquet", bad.iloc[:300])
    put(s3, bucket, "in/date=2026-12-01/part-1.parquet", bad.iloc[300:])
    put(s3, bucket, "in/date=2026-12-01/_SUCCESS.parquet", frame.iloc[:1])  # skipped, as locally
    local = tmp_path / "in"
    local.mkdir()
    bad.iloc[:300].to_parquet(local / "part-0.parquet")
    bad.iloc[300:].to_parquet(local / "part-1.parquet")

    url = f"s3://{bucket}/in/date=2026-12-01"
    summary = score(model, store, url, f"s3://{bucket}/out/predictions.parquet")
    expected = scoring.score(model, local, tmp_path / "out.parquet")
    assert (summary.rows, summary.scored, summary.rejected, summary.files) == (506, 505, 1, 2)
    assert summary.input == url and summary.output == f"s3://{bucket}/out/predictions.parquet"
    got = read(s3, bucket, "out/predictions.parquet")
    want = pd.read_parquet(tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(got.drop(columns="scored_at"), want.drop(columns="scored_at"))
    assert summary.rejects == f"s3://{bucket}/out/predictions.rejects.parquet"
    assert read(s3, bucket, "out/predictions.rejects.parquet")["row"].tolist() == [7]
    assert expected.rejected == 1

    # a rerun replaces both; fixed upstream, the old rejects go
    put(s3, bucket, "in/date=2026-12-01/part-0.parquet", frame.iloc[:300])
    again = score(model, store, url, f"s3://{bucket}/out/predictions.parquet")
    assert again.rejected == 0 and again.rejects is None
    assert len(read(s3, bucket, "out/predictions.parquet")) == 506
    assert "out/predictions.rejects.parquet" not in keys(s3, bucket)
    assert open_uploads(s3, bucket) == []


def test_one_csv_object_to_a_local_file(s3, store, frame, model, tmp_path):
    bucket = s3["bucket"]()
    put(s3, bucket, "houses.csv", frame)
    summary = score(model, store, f"s3://{bucket}/houses.csv", str(tmp_path / "out.parquet"))
    assert (summary.rows, summary.files) == (506, 1)
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 506


def test_the_upload_is_multipart_and_the_object_appears_only_at_commit(s3, store, monkeypatch):
    monkeypatch.setattr(multipart, "PART_BYTES", 5 << 20)  # S3's smallest part
    bucket = s3["bucket"]()
    url = objects.S3Url(bucket, "big.bin")
    data = bytes(range(256)) * (12 << 12)  # 12 MiB: two full parts and a last one
    upload = multipart.MultipartUpload(store, url)
    for start in range(0, len(data), 1 << 20):
        upload.write(data[start : start + (1 << 20)])
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == ["big.bin"]
    upload.commit()
    assert s3["client"].get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    assert open_uploads(s3, bucket) == []

    dropped = multipart.MultipartUpload(store, objects.S3Url(bucket, "dropped.bin"))
    dropped.write(data)
    dropped.abort()
    assert keys(s3, bucket) == ["big.bin"] and open_uploads(s3, bucket) == []


def test_a_failed_run_leaves_no_object_and_no_open_upload(s3, store, frame, model, monkeypatch):
    monkeypatch.setattr(multipart, "PART_BYTES", 1 << 10)  # parts go up from the first batch
    bucket = s3["bucket"]()
    bad = pd.concat([frame] * 20, ignore_index=True)
    bad.loc[len(bad) - 5 :, "RM"] = float("nan")
    put(s3, bucket, "in.parquet", bad)
    with pytest.raises(RejectLimitError):
        score(model, store, f"s3://{bucket}/in.parquet", f"s3://{bucket}/out.parquet",
              max_rejects=2, batch_rows=500)  # fmt: skip
    assert keys(s3, bucket) == ["in.parquet"] and open_uploads(s3, bucket) == []


def test_the_open_upload_of_a_killed_run_is_aborted_by_the_next_run(s3, store, frame, model):
    bucket = s3["bucket"]()
    put(s3, bucket, "in.csv", frame)
    killed = s3["client"].create_multipart_upload(Bucket=bucket, Key="out.parquet")
    s3["client"].upload_part(Bucket=bucket, Key="out.parquet", UploadId=killed["UploadId"],
                             PartNumber=1, Body=b"half a file")  # fmt: skip
    s3["client"].create_multipart_upload(Bucket=bucket, Key="out.parquet.other")  # not ours
    score(model, store, f"s3://{bucket}/in.csv", f"s3://{bucket}/out.parquet")
    assert open_uploads(s3, bucket) == ["out.parquet.other"]
    assert len(read(s3, bucket, "out.parquet")) == 506


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_bad_locations_are_one_line_exit_2_nothing_written(s3, frame, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bucket = s3["bucket"]()
    put(s3, bucket, "mixed/a.csv", frame.iloc[:5])
    put(s3, bucket, "mixed/b.parquet", frame.iloc[:5])
    put(s3, bucket, "notes/readme.txt", frame.iloc[:0])
    put(s3, bucket, "in.csv", frame)
    put(s3, bucket, "taken/part-0.parquet", frame.iloc[:5])
    good_in, good_out = f"s3://{bucket}/in.csv", f"s3://{bucket}/out.parquet"
    no_credentials = {
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
    }
    cases = [
        (f"s3://no-such-{bucket}/in.csv", good_out, {}, "no bucket 'no-such-"),
        (f"s3://{bucket}/nothing/", good_out, {}, "no such object or prefix"),
        (f"s3://{bucket}/mixed/", good_out, {}, "mixes CSV and Parquet"),
        (f"s3://{bucket}/notes", good_out, {}, "has no .csv or .parquet objects"),
        (good_in, f"s3://{bucket}/out/", {}, "a prefix; name an object"),
        (good_in, f"s3://{bucket}/taken", {}, "objects lie under taken/"),
        (good_in, f"s3://no-such-{bucket}/out.parquet", {}, "no bucket"),
        (good_in, good_out, no_credentials, "no AWS credentials found; set AWS_PROFILE"),
        (good_in, good_out, {"AWS_ENDPOINT_URL_S3": closed_port()}, "does not answer"),
    ]
    for source, output, env, message in cases:
        result = runner.invoke(app, ["score", "-m", "models:/m@a", "-i", source, "-o", output],
                               env=env)  # fmt: skip
        assert result.exit_code == 2, (source, output, result.output)
        assert message in result.output, (message, result.output)
        first, *rest = result.output.strip().splitlines()
        assert first.startswith("error: ") and "Traceback" not in result.output
        assert rest in ([], ["(run with --verbose for the full exception)"])
        assert "local" not in result.output  # no credential in what is printed
    assert sorted(keys(s3, bucket)) == [
        "in.csv", "mixed/a.csv", "mixed/b.parquet", "notes/readme.txt", "taken/part-0.parquet"
    ]  # fmt: skip
    assert open_uploads(s3, bucket) == [] and sorted(p.name for p in tmp_path.iterdir()) == []


def test_access_denied_names_the_permission_to_ask_for(s3, store):
    from botocore.stub import Stubber

    url = objects.S3Url("shared-bucket", "in/")
    with Stubber(store.client) as stub:
        stub.add_client_error("list_objects_v2", "AccessDenied", "Access Denied", 403)
        with pytest.raises(DataError, match=r"s3://shared-bucket/in/: access denied; .*s3:List"):
            store.data_files(url)
        stub.add_client_error("put_object", "AccessDenied", "Access Denied", 403)
        with pytest.raises(DataError, match=r"access denied; the credentials in use need s3:Put"):
            store.put_text(objects.S3Url("shared-bucket", "r.html"), "<p>")
