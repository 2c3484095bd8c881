"""The Prefect events mlpipe emits, so that deployment triggers and automations can react.

    mlpipe.data.arrived     a partition landed in the incoming folder (the ``watch_incoming``
                            sensor flow); resource ``mlpipe.partition.<partition>``
    mlpipe.model.promoted   ``mlpipe train`` moved the champion alias to a new version;
                            resource ``mlpipe.model.<name>``
    mlpipe.drift.detected   a batch run or the server saw inputs or predictions drift past the
                            profile's thresholds; resource ``mlpipe.model.<name>``

Every event carries what a trigger needs in its payload (``{{ event.payload.partition }}``,
``{{ event.payload.version }}``), so ``deploy/triggers.py`` can pass it on as flow parameters.
Events go to the Prefect API of the process (``PREFECT_API_URL``); inside a flow run Prefect
adds the run, flow and deployment as related resources by itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlpipe.drift import DriftResult
    from mlpipe.tracking import Promotion

DATA_ARRIVED = "mlpipe.data.arrived"
MODEL_PROMOTED = "mlpipe.model.promoted"
DRIFT_DETECTED = "mlpipe.drift.detected"

log = logging.getLogger(__name__)


def model_resource(name: str, version: str | None) -> dict[str, str]:
    return {
        "prefect.resource.id": f"mlpipe.model.{name}",
        "prefect.resource.name": name,
        "mlpipe.model.name": name,
        "mlpipe.model.version": version or "",
    }


def data_arrived(partition: str, input_root: str, files: int) -> Any:
    return emit(
        DATA_ARRIVED,
        {
            "prefect.resource.id": f"mlpipe.partition.{partition}",
            "prefect.resource.name": partition,
            "mlpipe.partition": partition,
        },
        {"partition": partition, "input_root": input_root, "files": files},
    )


def model_promoted(name: str, promotion: Promotion) -> Any:
    return emit(
        MODEL_PROMOTED,
        model_resource(name, promotion.version),
        {
            "name": name,
            "version": promotion.version,
            "alias": promotion.alias,
            "model_uri": f"models:/{name}/{promotion.version}",
            "scoring": promotion.scoring,
            "test_score": promotion.test_score,
            "previous_version": promotion.champion_version,
            "previous_score": promotion.champion_score,
        }
        # the names of regression's payload before scorings, kept for automations that read them
        | (
            {"test_mse": promotion.test_score, "previous_mse": promotion.champion_score}
            if promotion.scoring == "mse"
            else {}
        ),
    )


def drift_detected(
    name: str | None, version: str | None, source: str, result: DriftResult, **extra: Any
) -> Any:
    """``source``: where the rows came from (``batch:date=2026-11-22``, ``serve``)."""
    return emit(
        DRIFT_DETECTED,
        model_resource(name or "local", version),
        {"model": name, "version": version, "source": source} | result.summary() | extra,
    )


def emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> Any:
    """Send one event; returns it, or None where no Prefect server takes events (without
    PREFECT_API_URL Prefect would start a throwaway ephemeral server just to receive it)."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        log.info("event %s not sent: PREFECT_API_URL is not set", event)
        return None
    sent = emit_event(event=event, resource=resource, payload=payload)
    if sent is None:
        log.info("event %s not sent: no Prefect API to send it to", event)
    return sent
