"""Celery tasks. Each takes ids or plain values, opens its own session, and is safe to
run twice (retries and duplicate schedules happen)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from celery import group

from steward.jobs import runtime
from steward.jobs.base import StewardTask
from steward.jobs.worker import app
from steward.platform.resources import Resources

log = structlog.get_logger(__name__)


@app.task(name="steward.ping", base=StewardTask)
def ping() -> str:
    """A no-op round trip through broker, worker and result backend."""
    return "pong"


@app.task(name="steward.reminders.sweep", base=StewardTask)
def sweep_reminders() -> int:
    """Beat, every minute: fan out one `send` task per user with reminders due."""
    from steward.todos import service as todos

    async def owners(resources: Resources) -> list[uuid.UUID]:
        async with resources.transaction() as session:
            return await todos.owners_with_due_reminders(session, now=datetime.now(UTC))

    due = runtime.run(owners)
    if due:
        group(send_reminders.s(str(owner)) for owner in due).apply_async()
    log.info("reminders.swept", users=len(due))
    return len(due)


@app.task(name="steward.reminders.send", base=StewardTask)
def send_reminders(owner_id: str) -> int:
    """Create the user's due reminder notifications (exactly once each) and announce them."""
    from steward.notifications import service as notifications

    async def send(resources: Resources) -> int:
        async with resources.transaction() as session:
            return await notifications.send_due_reminders(session, owner_id=uuid.UUID(owner_id))

    return runtime.run(send)


@app.task(name="steward.cleanup", base=StewardTask)
def cleanup() -> int:
    """Beat, daily: drop expired Idempotency-Key responses."""
    from steward.todos import service as todos

    async def purge(resources: Resources) -> int:
        async with resources.transaction() as session:
            return await todos.purge_idempotency_keys(session)

    removed = runtime.run(purge)
    log.info("cleanup.idempotency_keys", removed=removed)
    return removed
