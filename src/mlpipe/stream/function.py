"""The AWS Lambda function: settings from the environment, the model loaded once per container.

A Lambda deployment points its handler at ``mlpipe.stream.lambda_handler``. The first
invocation of a container (its cold start) reads the settings below, loads the model and
builds the ``StreamHandler``; later invocations reuse it. Nothing is loaded at import time.

Environment:
    MLPIPE_MODEL_URI            models:/NAME@ALIAS, models:/NAME/VERSION or a model folder
    MLFLOW_TRACKING_URI         the registry to load it from (for models:/ URIs)
    MLPIPE_OUTPUT_STREAM        the stream the predictions go to (name or ARN)
    MLPIPE_DEAD_LETTER_STREAM   the stream poison records go to (optional: else logged)
    MLPIPE_IDEMPOTENCY_TABLE    the DynamoDB table of the idempotency ledger
    MLPIPE_IDEMPOTENCY_TTL_SECONDS  how long a key is remembered (default one day)
    AWS_ENDPOINT_URL            another Kinesis/DynamoDB endpoint (boto3 reads it)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlpipe.errors import SpecError
from mlpipe.settings import DEFAULT_TRACKING_URI
from mlpipe.stream.handler import StreamHandler
from mlpipe.stream.ledger import DEFAULT_TTL_SECONDS

ENVIRONMENT = {
    "model_uri": "MLPIPE_MODEL_URI",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "output_stream": "MLPIPE_OUTPUT_STREAM",
    "dead_letter_stream": "MLPIPE_DEAD_LETTER_STREAM",
    "idempotency_table": "MLPIPE_IDEMPOTENCY_TABLE",
    "idempotency_ttl_seconds": "MLPIPE_IDEMPOTENCY_TTL_SECONDS",
    "region": "AWS_REGION",
}


class FunctionSettings(BaseModel):
    """What the Lambda function is configured with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str
    tracking_uri: str | None = None
    output_stream: str
    dead_letter_stream: str | None = None
    idempotency_table: str
    idempotency_ttl_seconds: float = Field(DEFAULT_TTL_SECONDS, gt=0)
    region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FunctionSettings:
        values = {field: environ[name] for field, name in ENVIRONMENT.items() if environ.get(name)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            lines = [
                f"  {ENVIRONMENT[str(e['loc'][0])]}: {e['msg']}"
                + ("" if e["type"] == "missing" else f" (got {e.get('input')!r})")
                for e in exc.errors()
            ]
            raise SpecError("the stream function is misconfigured:\n" + "\n".join(lines)) from None


def build_handler(settings: FunctionSettings) -> StreamHandler:
    """Load the model and make the clients: the cold start."""
    import boto3

    from mlpipe.predictor import open_model
    from mlpipe.stream import kinesis
    from mlpipe.stream.ledger import DynamoLedger

    tracking_uri = settings.tracking_uri or DEFAULT_TRACKING_URI
    model = open_model(settings.model_uri, tracking_uri)
    dynamodb = boto3.client("dynamodb", region_name=settings.region or kinesis.DEFAULT_REGION)
    return StreamHandler(
        model=model,
        kinesis=kinesis.client(region=settings.region),
        output=settings.output_stream,
        dead_letter=settings.dead_letter_stream,
        ledger=DynamoLedger(dynamodb, settings.idempotency_table, settings.idempotency_ttl_seconds),
    )


_handler: StreamHandler | None = None


def lambda_handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (``mlpipe.stream.lambda_handler``)."""
    global _handler
    if _handler is None:
        _handler = build_handler(FunctionSettings.from_env())
    return _handler(event, context)
