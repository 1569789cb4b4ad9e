"""Todo change events: the one function every todo write calls."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from steward.platform.cache import invalidate_after_commit
from steward.platform.pubsub import publish_after_commit, user_channel
from steward.todos.models import Todo
from steward.todos.schemas import TodoRead

ChangeKind = Literal["todo.created", "todo.updated", "todo.deleted"]


def cache_namespace(owner_id: uuid.UUID) -> str:
    """Everything cached from one user's todos; any write moves it to a new version."""
    return f"todos:{owner_id}"


def todo_changed(session: AsyncSession, kind: ChangeKind, todo: Todo) -> None:
    """Announce `{type, todo}` on the owner's channel and drop the owner's cached reads,
    both once the transaction commits."""
    invalidate_after_commit(session, cache_namespace(todo.owner_id))
    publish_after_commit(
        session,
        user_channel(todo.owner_id),
        {"type": kind, "todo": TodoRead.model_validate(todo).model_dump(mode="json")},
    )
