"""Streaming inference from Kinesis: the Lambda handler, a consumer that runs it anywhere, and a
local Kinesis endpoint for development.

    events.py    Kinesis records as Lambda sees them; what the handler writes (pure)
    ledger.py    the idempotency ledger: DynamoDB for Lambda, SQLite for the consumer
    kinesis.py   the Kinesis calls (boto3)
    handler.py   one event in; predictions, dead letters and batchItemFailures out
    function.py  the Lambda function: settings from the environment, cold start
    state.py     the consumer's checkpoints and ledger in one SQLite file
    consumer.py  `mlpipe stream`: reads every shard, calls the handler as Lambda would
    local.py     `mlpipe stream --local`: a Kinesis-compatible server on a loopback port (moto)
    commands.py  the `mlpipe stream` commands

Importing the package is cheap: the handler's dependencies load on the first event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lambda_handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The AWS Lambda entry point: ``mlpipe.stream.lambda_handler`` (see ``function.py``)."""
    from mlpipe.stream.function import lambda_handler as handle

    return handle(event, context)


__all__ = ["lambda_handler"]
