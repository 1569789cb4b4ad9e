"""Celery tasks of the notifications domain: reminders (due todos become notifications) and
webhook deliveries. Reminders live here, not in todos: they create notifications, and
notifications already read todos (the other way round would be an import cycle)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from celery import shared_task

from steward.accounts import email_tokens
from steward.accounts import service as accounts
from steward.accounts.models import AccountToken
from steward.jobs import runtime
from steward.jobs import service as jobs
from steward.jobs.base import StewardTask, TransientError
from steward.notifications import account_mail, mail, push, service, webhooks
from steward.notifications.models import Webhook
from steward.platform.resources import Resources
from steward.settings import Settings, get_settings
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


# --- email ----------------------------------------------------------------------------------


def _send(kind: str, compose: Any) -> bool:
    """Build the message in a transaction (`compose(resources)` -> Mail or None when there is
    nothing to send), then deliver it outside it; SMTP trouble retries (TransientError)."""
    settings = get_settings()
    message = runtime.run(compose)
    if message is None:
        return False
    mail.deliver(settings, message)
    log.info("mail.done", kind=kind)
    return True


@shared_task(name=account_mail.SEND_VERIFICATION, base=StewardTask)
def send_verification(token_id: str) -> bool:
    """The verification email for a token issued at sign-up or on request."""
    settings = get_settings()

    async def compose(resources: Resources) -> mail.Mail | None:
        async with resources.transaction() as session:
            row = await session.get(AccountToken, uuid.UUID(token_id))
        if row is None or row.used_at is not None or row.expires_at <= datetime.now(UTC):
            return None  # used, expired or its account deleted meanwhile
        token = email_tokens.encode(row.id, "verify_email", settings.secret_key.get_secret_value())
        return mail.compose("verify_email", to=row.email,
                            link=mail.action_link(settings, "/verify-email", token),
                            ttl_s=settings.email_verification_ttl_s)  # fmt: skip

    return _send("verify_email", compose)


@shared_task(name=account_mail.SEND_PASSWORD_RESET, base=StewardTask)
def send_password_reset(email: str) -> bool:
    """A reset link for the account with this address, if there is an active one."""
    settings = get_settings()

    async def compose(resources: Resources) -> mail.Mail | None:
        async with resources.transaction() as session:
            user = await accounts.get_by_email(session, email)
            if user is None or not user.is_active:
                log.info("mail.password_reset_no_account")  # the address is not logged
                return None
            row = await email_tokens.issue(session, user=user, purpose="password_reset",
                                           ttl_s=settings.password_reset_ttl_s)  # fmt: skip
        token = email_tokens.encode(row.id, "password_reset",
                                    settings.secret_key.get_secret_value())  # fmt: skip
        return mail.compose("password_reset", to=row.email,
                            link=mail.action_link(settings, "/reset-password", token),
                            ttl_s=settings.password_reset_ttl_s)  # fmt: skip

    return _send("password_reset", compose)


@shared_task(name=service.PUSH_TO_DEVICE, base=StewardTask)
def push_to_device(notification_id: str, device_id: str) -> bool:
    """One notification to one device (notifications/push.py); the service's refusals
    forget the device, its hiccups retry."""

    async def work(resources: Resources) -> bool:
        return await push.push_to_device(resources, uuid.UUID(notification_id),
                                         uuid.UUID(device_id))  # fmt: skip

    return runtime.run(work)
