"""Devices that receive push notifications. Registering a token that another account holds
moves it to the newest registrant (a phone changes hands, or signs in as someone else): a
token is delivered to one user only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.notifications.models import Device, QuietHours
from steward.notifications.schemas import DeviceRegister, QuietHoursSet
from steward.platform.errors import NotFound

log = structlog.get_logger(__name__)


async def register(session: AsyncSession, *, user_id: uuid.UUID, device: DeviceRegister) -> Device:
    now = datetime.now(UTC)
    statement = (
        insert(Device)
        .values(id=uuid.uuid4(), user_id=user_id, platform=device.platform, token=device.token,
                name=device.name, created_at=now, updated_at=now)
        .on_conflict_do_update(
            index_elements=[Device.token],
            set_={"user_id": user_id, "platform": device.platform, "name": device.name,
                  "updated_at": now},
        )
        .returning(Device)
    )  # fmt: skip
    row = (await session.execute(statement)).scalar_one()
    log.info("device.registered", device_id=str(row.id), platform=row.platform)
    return row


async def list_own(session: AsyncSession, *, user_id: uuid.UUID) -> list[Device]:
    result = await session.execute(
        select(Device).where(Device.user_id == user_id).order_by(Device.updated_at.desc())
    )
    return list(result.scalars())


async def remove(session: AsyncSession, *, user_id: uuid.UUID, device_id: uuid.UUID) -> None:
    result = await session.execute(
        delete(Device).where(Device.id == device_id, Device.user_id == user_id)
        .returning(Device.id)
    )  # fmt: skip
    if result.scalar_one_or_none() is None:
        raise NotFound("no such device of yours")


async def quiet_hours(session: AsyncSession, *, user_id: uuid.UUID) -> QuietHours | None:
    return await session.get(QuietHours, user_id)


async def set_quiet_hours(
    session: AsyncSession, *, user_id: uuid.UUID, hours: QuietHoursSet
) -> QuietHours:
    statement = (
        insert(QuietHours)
        .values(user_id=user_id, start=hours.start, end=hours.end, timezone=hours.timezone)
        .on_conflict_do_update(
            index_elements=[QuietHours.user_id],
            set_={"start": hours.start, "end": hours.end, "timezone": hours.timezone},
        )
        .returning(QuietHours)
    )
    return (await session.execute(statement)).scalar_one()


async def clear_quiet_hours(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    await session.execute(delete(QuietHours).where(QuietHours.user_id == user_id))


def is_quiet(hours: QuietHours | None, now: datetime) -> bool:
    """Whether `now` falls in the quiet hours, in their time zone (spanning midnight when
    the end is earlier than the start)."""
    if hours is None or hours.start == hours.end:
        return False
    local = now.astimezone(ZoneInfo(hours.timezone)).time().replace(tzinfo=None)
    if hours.start < hours.end:
        return hours.start <= local < hours.end
    return local >= hours.start or local < hours.end
