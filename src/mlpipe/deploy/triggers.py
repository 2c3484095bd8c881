"""Event-driven runs: Prefect deployment triggers and automations on mlpipe's events.

    watch_incoming/mlpipe (hourly, a look a minute) --mlpipe.data.arrived--> batch_score(partition)
    mlpipe train --mlpipe.model.promoted--> batch_score/mlpipe(partition=latest, new version)
    tune/mlpipe (weekly cron) --mlpipe.model.promoted--> (as above)
    batch_score / mlpipe serve --mlpipe.drift.detected--> webhook (and tune/mlpipe, if asked)

All of it is Prefect's own machinery: the triggers are declared on the deployments
(``DeploymentEventTrigger``, created with them) and the server's triggers service runs them; the
drift notification is an automation with a Webhook block. Nothing here polls.
"""

from __future__ import annotations

from typing import Any

from mlpipe.signals import DATA_ARRIVED, DRIFT_DETECTED, MODEL_PROMOTED

# The sensor looks every SENSOR_POLL_SECONDS; each of its runs watches for SENSOR_WINDOW_SECONDS
# and the next starts then. Prefect's scheduler keeps at least an hour (and three runs) of a
# schedule ahead, and its per-schedule max_scheduled_runs is not honoured by the open-source
# server (PrefectHQ/prefect#13207): a one-minute schedule keeps some 60 runs waiting on the runs
# page and adds 1,440 a day; an hourly one keeps three and adds 24.
SENSOR_POLL_SECONDS = 60.0
SENSOR_WINDOW_SECONDS = 3600.0
RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
DRIFT_BLOCK = "{name}-drift-webhook"  # the deployments' name ("mlpipe" by default)
DRIFT_AUTOMATION = "{name}: drift detected"
# The event's own fields; | tojson keeps the JSON valid whatever the values hold.
DRIFT_PAYLOAD = (
    '{"event": {{ event.event | tojson }}, '
    '"occurred": {{ event.occurred | string | tojson }}, '
    '"model": {{ event.payload.model | tojson }}, '
    '"version": {{ event.payload.version | tojson }}, '
    '"source": {{ event.payload.source | tojson }}, '
    '"drifted_features": {{ event.payload.drifted_features | tojson }}, '
    '"prediction_drifted": {{ event.payload.prediction_drifted | tojson }}, '
    '"max_psi": {{ event.payload.max_psi | tojson }}, '
    '"max_psi_feature": {{ event.payload.max_psi_feature | tojson }}, '
    '"rows": {{ event.payload.rows | tojson }}}'
)


def sensor_parameters(poll_seconds: float, window_seconds: float) -> dict[str, float]:
    """``watch_incoming``'s own parameters for a run every ``window_seconds``: it looks every
    ``poll_seconds`` and stops a look before the next run is due (one run at a time)."""
    from mlpipe.errors import UserError

    if poll_seconds <= 0 or window_seconds < poll_seconds:
        raise UserError(
            f"--sensor-interval {poll_seconds:g} / --sensor-window {window_seconds:g}: give a "
            "positive interval and a window at least as long (a sensor run watches for the window)"
        )
    return {"poll_seconds": poll_seconds, "watch_seconds": window_seconds - poll_seconds}


def start_sensor(deployment_id: str) -> str:
    """A first sensor run now (the schedule's first is a window away), unless one is already
    running or about to: what it did, in a line."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        watching = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[UUID(deployment_id)])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                )
            ),
            limit=1,
        )
        if watching:
            return f"sensor run {watching[0].name} is watching already"
        run = client.create_flow_run_from_deployment(UUID(deployment_id), tags=["first-look"])
        return f"sensor run {run.name} starts now; the next ones follow the schedule"


def batch_score_triggers(model_name: str) -> list[Any]:
    """Score a partition when it lands; re-score the latest one when a champion is promoted."""
    from prefect.events import DeploymentEventTrigger

    return [
        DeploymentEventTrigger(
            name="mlpipe: score a partition when it lands",
            expect={DATA_ARRIVED},
            match={"prefect.resource.id": "mlpipe.partition.*"},
            parameters={"partition": "{{ event.payload.partition }}"},
        ),
        DeploymentEventTrigger(
            name=f"mlpipe: re-score the latest partition when {model_name} gets a champion",
            expect={MODEL_PROMOTED},
            match={"prefect.resource.id": f"mlpipe.model.{model_name}"},
            parameters={"partition": "latest", "model": "{{ event.payload.model_uri }}"},
        ),
    ]


def notify_on_drift(
    webhook_url: str, retrain_deployment_id: str | None = None, name: str = "mlpipe"
) -> str:
    """Create (or replace) the automation (named after the deployments' ``name``) that calls
    the webhook on ``mlpipe.drift.detected`` and, with a deployment id, also runs that
    deployment (a retrain); returns its id."""
    block = DRIFT_BLOCK.format(name=name)
    from prefect.events.actions import CallWebhook, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    from mlpipe.deploy.automations import replace_automation, save_webhook

    actions: list[Any] = [
        CallWebhook(block_document_id=save_webhook(block, webhook_url), payload=DRIFT_PAYLOAD)
    ]
    if retrain_deployment_id is not None:
        actions.append(RunDeployment(source="selected", deployment_id=retrain_deployment_id))
    return replace_automation(
        name=DRIFT_AUTOMATION.format(name=name),
        description=f"Calls the webhook block {block} when inputs drift"
        + (" and starts a retrain." if retrain_deployment_id else "."),
        trigger=EventTrigger(
            expect={DRIFT_DETECTED},
            match={"prefect.resource.id": "mlpipe.model.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=actions,
    )
