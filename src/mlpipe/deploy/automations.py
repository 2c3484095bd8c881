"""A Prefect automation that calls a webhook when a run of an mlpipe deployment fails.

Prefect's own machinery, declared: a Webhook block holds the URL (a secret, not shown in the UI
or logs), and an automation whose trigger is the ``prefect.flow-run.Failed`` (or ``Crashed``)
event of the given deployments calls it. The server's triggers service does the rest; nothing
here polls.
"""

from __future__ import annotations

from typing import Any

BLOCK_NAME = "mlpipe-failure-webhook"
AUTOMATION_NAME = "mlpipe: a deployment's flow run failed"
# Rendered by the server with the flow run the event is about; | tojson keeps the JSON valid.
PAYLOAD = (
    '{"event": {{ event.event | tojson }}, '
    '"flow_run_id": {{ flow_run.id | string | tojson }}, '
    '"flow_run": {{ flow_run.name | tojson }}, '
    '"deployment": {{ deployment.name | tojson }}, '
    '"state": {{ flow_run.state.name | tojson }}, '
    '"message": {{ flow_run.state.message | tojson }}, '
    '"parameters": {{ flow_run.parameters | tojson }}}'
)


def notify_on_failure(webhook_url: str, deployment_ids: list[str]) -> str:
    """Create (or replace) the webhook block and the automation; returns the automation id."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture

    block_id = Webhook(url=webhook_url).save(BLOCK_NAME, overwrite=True)
    _delete_existing()
    automation: Any = Automation(
        name=AUTOMATION_NAME,
        description="Calls the webhook block mlpipe-failure-webhook when an mlpipe run fails.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids],
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    ).create()
    return str(automation.id)


def _delete_existing() -> None:
    """Remove earlier automations of this name, so a rerun replaces rather than duplicates."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(automation.id)
