"""A Kinesis-compatible endpoint on a loopback port, for development and tests.

moto's standalone server speaks the Kinesis (and DynamoDB) API over HTTP, so the consumer and
``mlpipe stream put`` talk to it exactly as they would to AWS. Its records live in memory: they
are gone when the process that runs it stops. It is a development tool, not a stand-in for the
service's limits or durability.

moto's Kinesis is not safe for concurrent requests (two PutRecords on one shard at once can get
the same sequence number, and one record is lost), while its server answers each request on a
thread of its own. The server here therefore runs one request at a time. moto also finds a
shard's last sequence number by copying all its keys, for every record put (quadratic in the
shard's size: 100,000 records took minutes); ``_fast_last_sequence_number`` makes that lookup
constant-time, with the same result.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# boto3 signs every request; moto accepts any credentials, AWS would refuse these
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


@contextmanager
def endpoint(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the local endpoint on a thread while the block runs; yields its URL."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    _fast_last_sequence_number()
    moto = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with lock:
            return list(moto(environ, start_response))

    server = make_server(
        host, port, one_at_a_time, threaded=True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="local-kinesis", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


def _fast_last_sequence_number() -> None:
    """moto's ``Shard.get_max_sequence_number`` is ``list(self.records.keys())[-1]``: the last
    key of an insertion-ordered dict, which ``next(reversed(...))`` reads without a copy."""
    from moto.kinesis.models import Shard

    def last(shard: Any) -> int:
        return next(reversed(shard.records), 0)

    Shard.get_max_sequence_number = last  # type: ignore[method-assign,assignment]


def use_local_credentials() -> None:
    """Give boto3 the dummy credentials moto takes, unless some are set already."""
    if "AWS_ACCESS_KEY_ID" not in os.environ:
        os.environ.update(LOCAL_CREDENTIALS)


def create_streams(client: Any, names: Sequence[str], shards: int) -> None:
    """Create each stream (``shards`` shards) that does not exist yet, and wait until active."""
    from botocore.exceptions import ClientError

    for name in names:
        try:
            client.create_stream(StreamName=name, ShardCount=shards)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
    for name in names:
        client.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
        )
