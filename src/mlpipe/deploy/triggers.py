"""Event-driven runs: Prefect deployment triggers and automations on mlpipe's events.

    watch_incoming/mlpipe (every minute) --mlpipe.data.arrived--> batch_score/mlpipe(partition)
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

SENSOR_INTERVAL_SECONDS = 60.0
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
