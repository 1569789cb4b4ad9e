"""Notification rules: reminders created exactly once, listing, marking read. Every new
notification is published live on the user's channel after commit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.jobs import service as jobs
from steward.notifications import devices, webhooks
from steward.notifications.models import Notification
from steward.notifications.schemas import NotificationRead
from steward.platform.errors import NotFound
from steward.platform.pagination import newest_first
from steward.platform.pubsub import user_channel
from steward.platform.transactions import after_commit
from steward.todos import service as todos

log = structlog.get_logger(__name__)

REMINDER = "reminder"


# The task of notifications/tasks.py that pushes one notification to one device.
PUSH_TO_DEVICE = "steward.push.device"


async def send_due_reminders(session: AsyncSession, *, owner_id: uuid.UUID) -> int:
    """Create (once) and announce the owner's due reminders; returns how many were new."""
    created = 0
    for due in await todos.claim_due_reminders(session, owner_id=owner_id, now=datetime.now(UTC)):
        notification_id = (
            await session.execute(
                insert(Notification)
                .values(
                    id=uuid.uuid4(),
                    user_id=due.owner_id,
                    kind=REMINDER,
                    todo_id=due.todo_id,
                    scheduled_for=due.remind_at,
                    title=due.title,
                    body="",
                )
                .on_conflict_do_nothing(constraint="uq_notifications_once")
                .returning(Notification.id)
            )
        ).scalar_one_or_none()
        if notification_id is None:
            continue  # an earlier sweep or a retried task already made it
        created += 1
        notification = await session.get(Notification, notification_id)
        assert notification is not None
        body = NotificationRead.model_validate(notification).model_dump(mode="json")
        after_commit(session).publish(
            user_channel(due.owner_id),
            {"type": "notification.created", "notification": body},
        )
        await webhooks.deliver_after_commit(
            session, user_id=due.owner_id, event_type="notification.created", data=body
        )
        for device in await devices.list_own(session, user_id=due.owner_id):
            await jobs.enqueue(session, task=PUSH_TO_DEVICE,
                               args=[str(notification_id), str(device.id)])  # fmt: skip
    if created:
        log.info("reminders.sent", owner_id=str(owner_id), count=created)
    return created


async def list_for(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    unread: bool | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Notification], str | None]:
    query = select(Notification).where(Notification.user_id == user_id)
    if unread is True:
        query = query.where(Notification.read_at.is_(None))
    elif unread is False:
        query = query.where(Notification.read_at.is_not(None))
    return await newest_first(
        session,
        query,
        at=Notification.created_at,
        key=Notification.id,
        limit=limit,
        cursor=cursor,
    )


async def mark_read(
    session: AsyncSession, *, user_id: uuid.UUID, notification_id: uuid.UUID
) -> Notification:
    notification = await session.get(Notification, notification_id)
    if notification is None or notification.user_id != user_id:
        raise NotFound("no such notification")
    if notification.read_at is None:
        notification.read_at = datetime.now(UTC)
        await session.flush()
    return notification


async def mark_all_read(session: AsyncSession, *, user_id: uuid.UUID) -> int:
    result = await session.execute(
        update(Notification)
        .where(Notification.user_id == user_id, Notification.read_at.is_(None))
        .values(read_at=datetime.now(UTC))
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
