"""Todo change events: the one function every todo write calls."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from steward.platform.pubsub import user_channel
from steward.platform.transactions import after_commit
from steward.todos.models import Todo
from steward.todos.schemas import TodoRead

ChangeKind = Literal["todo.created", "todo.updated", "todo.deleted"]


def cache_namespace(owner_id: uuid.UUID) -> str:
    """Everything cached from one user's todos; any write moves it to a new version."""
    return f"todos:{owner_id}"


def todo_changed(session: AsyncSession, kind: ChangeKind, todo: Todo) -> None:
    """Announce `{type, todo}` on the owner's channel and drop the owner's cached reads,
    both once the transaction commits."""
    queue = after_commit(session)
    queue.invalidate(cache_namespace(todo.owner_id))
    queue.publish(
        user_channel(todo.owner_id),
        {"type": kind, "todo": TodoRead.model_validate(todo).model_dump(mode="json")},
    )
