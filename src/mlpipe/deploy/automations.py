"""Prefect automations that call a webhook: here, when a run of an mlpipe deployment fails
(``triggers.notify_on_drift`` uses the same two helpers for drift).

Prefect's own machinery, declared: a Webhook block holds the URL (a secret, not shown in the UI
or logs), and an automation whose trigger is the ``prefect.flow-run.Failed`` (or ``Crashed``)
event of the given deployments calls it. The server's triggers service does the rest; nothing
here polls.
"""

from __future__ import annotations

from typing import Any

BLOCK_NAME = "{name}-failure-webhook"  # the deployments' name ("mlpipe" by default)
AUTOMATION_NAME = "{name}: a deployment's flow run failed"
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


def notify_on_failure(webhook_url: str, deployment_ids: list[str], name: str = "mlpipe") -> str:
    """Create (or replace) the webhook block and the automation of the deployments called
    ``name``; returns the automation id."""
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = BLOCK_NAME.format(name=name)
    return replace_automation(
        name=AUTOMATION_NAME.format(name=name),
        description=f"Calls the webhook block {block} when a run of the {name} deployments fails.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids],
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[CallWebhook(block_document_id=save_webhook(block, webhook_url), payload=PAYLOAD)],
    )


def save_webhook(block_name: str, url: str) -> Any:
    """A Webhook block holding ``url`` (a secret: not shown in the UI or logs); its id."""
    from prefect.blocks.webhook import Webhook

    return Webhook(url=url).save(block_name, overwrite=True)


def replace_automation(name: str, description: str, trigger: Any, actions: list[Any]) -> str:
    """Create the automation, first removing earlier ones of this name, so a rerun replaces
    rather than duplicates; returns its id."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(name):
            client.delete_automation(automation.id)
    created: Any = Automation(
        name=name, description=description, trigger=trigger, actions=actions
    ).create()
    return str(created.id)
