"""Notification rules: reminders created exactly once, listing, marking read. Every new
notification is published live on the user's channel after commit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.notifications.models import Notification
from steward.notifications.schemas import NotificationRead
from steward.platform.errors import NotFound, UnprocessableContent
from steward.platform.pagination import decode_cursor, encode_cursor
from steward.platform.pubsub import publish_after_commit, user_channel
from steward.todos import service as todos

log = structlog.get_logger(__name__)

REMINDER = "reminder"


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
        publish_after_commit(
            session,
            user_channel(due.owner_id),
            {
                "type": "notification.created",
                "notification": NotificationRead.model_validate(notification).model_dump(
                    mode="json"
                ),
            },
        )
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
    if cursor is not None:
        values = decode_cursor(cursor)
        try:
            created, last = datetime.fromisoformat(values["c"]), uuid.UUID(values["id"])
        except (KeyError, TypeError, ValueError):
            raise UnprocessableContent("cursor is not valid") from None
        query = query.where(
            or_(
                Notification.created_at < created,
                and_(Notification.created_at == created, Notification.id < last),
            )
        )
    query = query.order_by(Notification.created_at.desc(), Notification.id.desc())
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"c": rows[-1].created_at.isoformat(), "id": str(rows[-1].id)})
    return rows, next_cursor


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
