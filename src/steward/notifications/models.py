"""Tables of the notifications domain."""

from __future__ import annotations

import uuid
from datetime import datetime, time

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from steward.platform.db import Base, new_id


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    todo_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("todos.id", ondelete="SET NULL"))
    scheduled_for: Mapped[datetime | None]
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, server_default="")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    read_at: Mapped[datetime | None]

    __table_args__ = (
        # One reminder per todo and reminder time, however many sweeps or retries run.
        UniqueConstraint("todo_id", "kind", "scheduled_for", name="uq_notifications_once"),
        Index("ix_notifications_user_created", "user_id", "created_at", "id"),
        Index("ix_notifications_unread", "user_id", postgresql_where=text("read_at IS NULL")),
    )


class Webhook(Base):
    """A user's endpoint for notifications, and the secret their deliveries are signed with
    (kept readable: HMAC needs it; shown to the user only when set or rotated)."""

    __tablename__ = "webhooks"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Device(Base):
    """A device that receives push notifications: its platform and push token (FCM
    registration token or APNs device token). A token belongs to one user at a time."""

    __tablename__ = "devices"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(4096), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (Index("ix_devices_user_id", "user_id"),)


class QuietHours(Base):
    """When a user wants no push (local time of their time zone); notifications still reach
    the app's list and live events."""

    __tablename__ = "quiet_hours"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    start: Mapped[time]
    end: Mapped[time]
    timezone: Mapped[str] = mapped_column(String(64))
