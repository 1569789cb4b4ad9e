"""Celery tasks of the notifications domain: webhook deliveries."""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from steward.jobs import runtime
from steward.jobs.base import StewardTask, TransientError
from steward.jobs.worker import app
from steward.notifications import webhooks
from steward.notifications.models import Webhook
from steward.platform.resources import Resources
from steward.settings import get_settings

log = structlog.get_logger(__name__)
_settings = get_settings()


@app.task(
    name=webhooks.DELIVER_TASK,
    base=StewardTask,
    max_retries=_settings.webhook_max_retries,
    retry_base_s=_settings.webhook_retry_base_s,
)
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
