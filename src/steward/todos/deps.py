"""Dependencies that load the caller's todo or answer 404, once, for every verb."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Path

from steward.accounts.authentication import Principal
from steward.accounts.deps import CurrentUserId, requires
from steward.platform.deps import Session
from steward.todos import service
from steward.todos.models import Todo

TodosReader = Annotated[Principal, Depends(requires("todos:read"))]
TodosWriter = Annotated[Principal, Depends(requires("todos:write"))]
TodoId = Annotated[uuid.UUID, Path(description="the todo's id")]


async def owned_todo_for_update(
    todo_id: TodoId, _: TodosWriter, owner_id: CurrentUserId, session: Session
) -> Todo:
    # Row lock: concurrent writers queue up, so versions increase one at a time and an
    # If-Match check cannot race with another update.
    return await service.get(session, owner_id=owner_id, todo_id=todo_id, for_update=True)


OwnedTodoForUpdate = Annotated[Todo, Depends(owned_todo_for_update)]
IfMatch = Annotated[
    str | None,
    Header(alias="If-Match", max_length=200, description="ETag from a previous read"),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="repeat-safe creation: same key and body within 24 h returns the first result",
    ),
]
