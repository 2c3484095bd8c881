"""``mlpipe stream``: the consumer, and ``put`` / ``read`` for a stream's records.

Parse, call, print; heavy imports inside the commands. Environment variables (AWS_ENDPOINT_URL,
AWS_REGION, MLFLOW_TRACKING_URI, MLPIPE_HOME) are read here, through the options.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from mlpipe.cli.common import Verbose, fail, user_errors
from mlpipe.errors import UserError
from mlpipe.settings import DEFAULT_MODEL_URI, Settings

LOCAL_STREAMS = ("mlpipe-input", "mlpipe-output", "mlpipe-dead-letter")

app = typer.Typer(
    rich_markup_mode="markdown",  # a docstring's line breaks join into one paragraph
    help="Streaming inference from Kinesis, as the Lambda function runs it.",
    invoke_without_command=True,
)

EndpointOption = Annotated[
    str | None,
    typer.Option(
        envvar="AWS_ENDPOINT_URL",
        help="a Kinesis endpoint other than AWS's, such as the one --local prints.",
        show_default=False,
    ),
]
RegionOption = Annotated[
    str, typer.Option(envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], help="the AWS region.")
]


@app.callback()
@user_errors
def consume(
    ctx: typer.Context,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="the stream to read (name or ARN).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="the stream predictions go to.")
    ] = None,
    dead_letter: Annotated[
        str | None,
        typer.Option(help="the stream poison and given-up records go to (default: logged)."),
    ] = None,
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION or a folder."),
    ] = DEFAULT_MODEL_URI,
    batch_size: Annotated[int, typer.Option(help="records per handler call (BatchSize).")] = 100,
    max_retries: Annotated[
        int, typer.Option(help="retries of a failing batch (MaximumRetryAttempts).")
    ] = 3,
    max_record_age: Annotated[
        float, typer.Option(help="seconds before a failing record is given up.")
    ] = 3600.0,
    starting_position: Annotated[
        str, typer.Option(help="where a shard with no checkpoint starts: TRIM_HORIZON | LATEST.")
    ] = "TRIM_HORIZON",
    state: Annotated[
        Path | None,
        typer.Option(help="the SQLite file of checkpoints and the idempotency ledger."),
    ] = None,
    poll_seconds: Annotated[float, typer.Option(help="wait when every shard is caught up.")] = 0.5,
    endpoint_url: EndpointOption = None,
    region: RegionOption = "us-east-1",
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="start a local Kinesis endpoint (moto) with the streams, and read it."
        ),
    ] = False,
    local_port: Annotated[
        int, typer.Option(help="the local endpoint's port (0: any free).")
    ] = 4567,
    shards: Annotated[int, typer.Option(help="shards of each stream --local creates.")] = 2,
    verbose: Verbose = False,
) -> None:
    """Consume a Kinesis stream: score each record, put predictions on the output stream."""
    if ctx.invoked_subcommand is not None:
        return
    from mlpipe.stream.consumer import ConsumerSettings

    settings = ConsumerSettings(
        batch_size=batch_size,
        max_retries=max_retries,
        max_record_age_seconds=max_record_age,
        starting_position=starting_position.upper(),
        poll_seconds=poll_seconds,
    )
    with contextlib.ExitStack() as stack:
        if local:
            endpoint_url = _start_local(stack, local_port, shards, region, LOCAL_STREAMS)
            input, output = input or LOCAL_STREAMS[0], output or LOCAL_STREAMS[1]
            dead_letter = dead_letter or LOCAL_STREAMS[2]
            if state is None:  # the records die with this process: so do the checkpoints
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mlpipe-"))
                state = Path(folder) / "stream.db"
        if not input or not output:
            raise UserError("--input and --output are required (or --local)")
        _consume(model, input, output, dead_letter, settings, state, endpoint_url, region)


def _start_local(
    stack: contextlib.ExitStack, port: int, shards: int, region: str, streams: Sequence[str]
) -> str:
    """Start the local endpoint with ``streams`` (until ``stack`` closes); print how to use it."""
    from mlpipe.stream import kinesis, local

    local.use_local_credentials()
    url = stack.enter_context(local.endpoint(port=port))
    local.create_streams(kinesis.client(url, region), streams, shards)
    credentials = " ".join(f"{k}={v}" for k, v in local.LOCAL_CREDENTIALS.items())
    typer.echo(
        f"local Kinesis endpoint {url} (moto, in memory) with streams "
        f"{', '.join(streams)} ({shards} shards each)\n"
        "from another terminal:\n"
        f"  export AWS_ENDPOINT_URL={url} AWS_REGION={region} {credentials}\n"
        f"  mlpipe stream put --stream {streams[0]} --file records.jsonl\n"
        f"  mlpipe stream read --stream {streams[1] if len(streams) > 1 else streams[0]}",
        err=True,
    )
    return url


@app.command()
@user_errors
def endpoint(
    port: Annotated[int, typer.Option(help="the port to listen on (0: any free).")] = 4567,
    stream: Annotated[
        list[str] | None, typer.Option("--stream", "-s", help="a stream to create (repeat).")
    ] = None,
    shards: Annotated[int, typer.Option(help="shards of each stream.")] = 2,
    region: RegionOption = "us-east-1",
    verbose: Verbose = False,
) -> None:
    """Run only the local Kinesis endpoint (moto, in memory) until Ctrl-C, with the streams."""
    stop = _stop_on_signals()
    with contextlib.ExitStack() as stack:
        try:
            _start_local(stack, port, shards, region, stream or LOCAL_STREAMS)
        except OSError as exc:
            raise fail(f"cannot listen on port {port}: {exc.strerror}") from None
        while not stop.wait(1.0):
            pass


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (Ctrl-C)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _consume(
    model_uri: str,
    input: str,
    output: str,
    dead_letter: str | None,
    settings: Any,
    state_path: Path | None,
    endpoint_url: str | None,
    region: str,
) -> None:
    from mlpipe.deploy.stack import state_dir
    from mlpipe.predictor import open_model
    from mlpipe.stream import kinesis
    from mlpipe.stream.consumer import Consumer
    from mlpipe.stream.handler import StreamHandler
    from mlpipe.stream.state import LocalState

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client = kinesis.client(endpoint_url, region)
    info = kinesis.describe(client, input)
    for stream in (output, dead_letter):
        if stream:
            kinesis.describe(client, stream)
    path = state_path or state_dir() / "stream" / f"{info.name}.db"
    loaded = open_model(model_uri, Settings.from_env().tracking_uri)
    local_state = LocalState(path)
    try:
        handler = StreamHandler(loaded, client, output, local_state.ledger, dead_letter)
        consumer = Consumer(client, info, handler, local_state, settings, region, dead_letter)
        stop = _stop_on_signals()
        typer.echo(
            f"consuming {info.name} -> {output} with {loaded.ref.name or loaded.ref.uri} version "
            f"{loaded.version} ({loaded.predictor.kind}); state {path}"
            + (
                f"; {local_state.interrupted_claims} interrupted record(s) to check"
                if local_state.interrupted_claims
                else ""
            ),
            err=True,
        )
        reporter = threading.Thread(target=_report, args=(consumer, handler, stop), daemon=True)
        reporter.start()
        consumer.run(stop)
        stop.set()
        typer.echo(f"stopped: {_summary(consumer, handler)}", err=True)
    finally:
        local_state.close()


def _report(consumer: Any, handler: Any, stop: threading.Event, every: float = 10.0) -> None:
    last = -1
    while not stop.wait(every):
        if consumer.progress.records != last:
            last = consumer.progress.records
            logging.getLogger("mlpipe.stream").info(_summary(consumer, handler))


def _summary(consumer: Any, handler: Any) -> str:
    p, t = consumer.progress, handler.totals
    return (
        f"{p.records:,} records: {t.scored:,} scored, {t.dead_lettered:,} dead-lettered, "
        f"{t.duplicates:,} duplicates skipped, {p.retries:,} retries, {p.given_up:,} given up; "
        f"{p.lag_millis:,} ms behind"
    )


@app.command()
@user_errors
def put(
    stream: Annotated[str, typer.Option("--stream", "-s", help="the stream to put records on.")],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="JSON lines, one record each ('-': stdin).")
    ],
    endpoint_url: EndpointOption = None,
    region: RegionOption = "us-east-1",
    verbose: Verbose = False,
) -> None:
    """Put each line of a JSON-lines file on a stream as one record (partition key: its id)."""
    from mlpipe.stream import kinesis

    lines = (sys.stdin if str(file) == "-" else _open(file)).read().splitlines()
    entries = [(line.encode(), _partition_key(line)) for line in lines if line.strip()]
    client = kinesis.client(endpoint_url, region)
    kinesis.describe(client, stream)
    pending = entries
    for attempt in range(6):  # PutRecords fails records one by one under throttling
        errors = kinesis.put_records(client, stream, pending)
        pending = [entry for entry, error in zip(pending, errors, strict=True) if error]
        if not pending:
            break
        time.sleep(0.2 * 2**attempt)
    typer.echo(f"put {len(entries) - len(pending):,} records on {stream}")
    if pending:
        raise fail(f"{len(pending):,} records were not accepted: {errors[0]}", code=1)


def _open(file: Path) -> Any:
    try:
        return file.open(encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None


def _partition_key(line: str) -> str:
    """The record's id when it has one (a key's records stay in order), else a random key."""
    with contextlib.suppress(ValueError):
        payload = json.loads(line)
        if isinstance(payload, dict) and payload.get("id") not in (None, ""):
            return str(payload["id"])[:256]
    return uuid.uuid4().hex


@app.command()
@user_errors
def read(
    stream: Annotated[str, typer.Option("--stream", "-s", help="the stream to print.")],
    endpoint_url: EndpointOption = None,
    region: RegionOption = "us-east-1",
    verbose: Verbose = False,
) -> None:
    """Print every record a stream holds now, one line each (shard by shard)."""
    from mlpipe.stream import kinesis

    client = kinesis.client(endpoint_url, region)
    kinesis.describe(client, stream)
    for record in kinesis.read(client, stream):
        typer.echo(record["Data"].decode("utf-8", errors="replace"))
