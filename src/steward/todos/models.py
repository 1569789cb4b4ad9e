"""Tables of the todos domain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from steward.platform.db import Base, new_id

# Sorting by due date puts undated todos last (ascending): the index and the keyset
# comparison use this same expression. The stand-in is a plain far-future instant: not
# 'infinity' (a cursor carries datetimes) and not datetime.max (asyncpg sends that as
# 'infinity', which would then compare greater than the stand-in itself).
UNDATED = datetime(9999, 12, 31, tzinfo=UTC)
UNDATED_SQL = "'9999-12-31 00:00:00+00'::timestamptz"
DUE_SORT_KEY: ColumnElement[datetime] = func.coalesce(literal_column("due_at"), text(UNDATED_SQL))


class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    due_at: Mapped[datetime | None]
    done: Mapped[bool] = mapped_column(server_default=text("false"))
    done_at: Mapped[datetime | None]
    priority: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(32)), server_default="{}")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    remind_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("priority BETWEEN 0 AND 3", name="priority"),
        CheckConstraint("char_length(title) BETWEEN 1 AND 200", name="title_length"),
        CheckConstraint("char_length(description) <= 10000", name="description_length"),
        Index("ix_todos_owner_created", "owner_id", "created_at", "id"),
        Index("ix_todos_owner_due", "owner_id", DUE_SORT_KEY, "id"),
        Index("ix_todos_owner_priority", "owner_id", "priority", "created_at", "id"),
        Index("ix_todos_tags", "tags", postgresql_using="gin"),
        # The reminder sweep's query: due, not yet reminded for this remind_at, not done.
        Index(
            "ix_todos_pending_reminders",
            "remind_at",
            postgresql_where=text(
                "remind_at IS NOT NULL AND reminded_at IS DISTINCT FROM remind_at AND NOT done"
            ),
        ),
    )


class IdempotencyKey(Base):
    """The first response to a POST made with an `Idempotency-Key`, kept for 24 hours."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("owner_id", "key"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )
