"""Todo change events: the one function every todo write calls."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from steward.platform.pubsub import publish_after_commit, user_channel
from steward.todos.models import Todo
from steward.todos.schemas import TodoRead

ChangeKind = Literal["todo.created", "todo.updated", "todo.deleted"]


def todo_changed(session: AsyncSession, kind: ChangeKind, todo: Todo) -> None:
    """Announce `{type, todo}` on the owner's channel once the transaction commits."""
    publish_after_commit(
        session,
        user_channel(todo.owner_id),
        {"type": kind, "todo": TodoRead.model_validate(todo).model_dump(mode="json")},
    )
