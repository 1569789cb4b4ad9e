"""Celery tasks of the notifications domain: reminders (due todos become notifications) and
webhook deliveries. Reminders live here, not in todos: they create notifications, and
notifications already read todos (the other way round would be an import cycle)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import shared_task

from steward.jobs import runtime
from steward.jobs import service as jobs
from steward.jobs.base import StewardTask, TransientError
from steward.notifications import service, webhooks
from steward.notifications.models import Webhook
from steward.platform.resources import Resources
from steward.settings import Settings
from steward.todos import service as todos

log = structlog.get_logger(__name__)


@shared_task(name="steward.reminders.sweep", base=StewardTask)
def sweep_reminders() -> int:
    """Beat, every minute: one `send` job per user with reminders due."""

    async def fan_out(resources: Resources) -> int:
        async with resources.transaction() as session:
            due = await todos.owners_with_due_reminders(session, now=datetime.now(UTC))
            for owner in due:
                await jobs.enqueue(session, task=todos.SEND_REMINDERS, args=[str(owner)])
        return len(due)

    users = runtime.run(fan_out)
    log.info("reminders.swept", users=users)
    return users


@shared_task(name=todos.SEND_REMINDERS, base=StewardTask)
def send_reminders(owner_id: str) -> int:
    """Create the user's due reminder notifications (exactly once each) and announce them."""

    async def send(resources: Resources) -> int:
        async with resources.transaction() as session:
            return await service.send_due_reminders(session, owner_id=uuid.UUID(owner_id))

    return runtime.run(send)


class _WebhookRetries(StewardTask):
    """Retries as the settings say, read when a delivery fails (not when this is imported)."""

    def retry_policy(self, settings: Settings) -> tuple[int, float]:
        return settings.webhook_max_retries, settings.webhook_retry_base_s


@shared_task(name=webhooks.DELIVER_TASK, base=_WebhookRetries)
def deliver_webhook(user_id: str, event: dict[str, Any]) -> int | None:
    """POST one signed event to the user's webhook. Failures retry with backoff and end as a
    dead letter; a URL that resolves to a private address is refused at once."""

    async def work(resources: Resources) -> int | None:
        async with resources.transaction() as session:
            webhook = await session.get(Webhook, uuid.UUID(user_id))
        if webhook is None:
            return None  # removed since the event happened
        delivery = webhooks.build(webhook, event)
        try:
            status = await webhooks.send(delivery, resources.settings)
        except webhooks.DeliveryFailed as exc:
            raise TransientError(str(exc)) from exc
        except webhooks.Refused as exc:
            # Expected, and final: one line, no traceback, no retry.
            log.warning("webhook.refused", user_id=user_id, event_id=event.get("id"),
                        reason=str(exc))  # fmt: skip
            return None
        log.info("webhook.delivered", user_id=user_id, event_id=event.get("id"), status=status)
        return status

    return runtime.run(work)
