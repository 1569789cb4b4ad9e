"""Tables of the jobs domain."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from steward.platform.db import Base, new_id


class DeadLetter(Base):
    """A task that failed for good: what ran, with what, why, and how often it was tried."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    task_id: Mapped[str] = mapped_column(String(64))
    task_name: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSONB)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB)
    exception: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int]
    failed_at: Mapped[datetime] = mapped_column(server_default=func.now())
    replayed_at: Mapped[datetime | None]
    replay_task_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_dead_letters_failed_at", "failed_at"),)


class Job(Base):
    """A task to run, recorded in the transaction that asked for it (the outbox): sent to the
    broker once that transaction commits, or by the sweeper if that send never happened.
    `owner_id` (None for the system's own jobs) is who may read its status."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    args: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'"))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    sent_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_jobs_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),
    )
