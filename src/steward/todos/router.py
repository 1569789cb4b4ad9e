"""HTTP endpoints of the todos domain."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response, status

from steward.accounts.deps import CurrentUserId
from steward.accounts.limits import RateLimited
from steward.platform.api import API_V1, QueryModel
from steward.platform.deps import Session, resources_of
from steward.platform.pagination import Page
from steward.todos import service
from steward.todos.deps import (
    IdempotencyKey,
    IfMatch,
    OwnedTodoForUpdate,
    TodoId,
    TodosReader,
    TodosWriter,
)
from steward.todos.models import Todo
from steward.todos.schemas import TodoCreate, TodoListQuery, TodoRead, TodoSort, TodoUpdate

router = APIRouter(prefix=f"{API_V1}/todos", tags=["todos"], dependencies=[RateLimited])

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid credentials"},
    403: {"description": "missing scope"},
}
_ONE: dict[int | str, dict[str, Any]] = {**_AUTH, 404: {"description": "no such todo of yours"}}
_WRITE_ONE: dict[int | str, dict[str, Any]] = {
    **_ONE,
    412: {"description": "If-Match does not match the current ETag"},
}


def _read(todo: Todo, response: Response) -> TodoRead:
    response.headers["ETag"] = service.etag(todo)
    return TodoRead.model_validate(todo)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a todo; honours Idempotency-Key (scope todos:write)",
    responses={**_AUTH, 422: {"description": "invalid, or key reused with another body"}},
)
async def create_todo(
    todo_in: TodoCreate,
    _: TodosWriter,
    owner_id: CurrentUserId,
    session: Session,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> TodoRead:
    created = await service.create(
        session, owner_id=owner_id, todo_in=todo_in, idempotency_key=idempotency_key
    )
    body = TodoRead.model_validate(created.body)
    response.headers["ETag"] = f'"{body.version}"'
    response.headers["Location"] = request.url_for("read_todo", todo_id=body.id).path
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return body


_LIST_QUERY = QueryModel(TodoListQuery)


@router.get("", summary="List own todos, newest first by default (scope todos:read)",
            responses=_AUTH, response_model=Page[TodoRead],
            openapi_extra=_LIST_QUERY.openapi_extra)  # fmt: skip
async def list_todos(
    _: TodosReader,
    owner_id: CurrentUserId,
    request: Request,
    query: Annotated[TodoListQuery, Depends(_LIST_QUERY)],
) -> Page[TodoRead] | Response:
    limit, cursor, sort = query.limit, query.cursor, query.sort
    filters = service.TodoFilter(
        done=query.done,
        due_before=query.due_before,
        due_after=query.due_after,
        tags=tuple(t.strip().lower() for t in query.tag),
        q=query.q,
    )
    # The list a client opens with is the hottest read of all: it comes from the cache and
    # takes no database session unless it misses, so this route opens its own.
    resources = resources_of(request)
    if cursor is None and filters == service.TodoFilter() and sort is TodoSort.CREATED_DESC:
        page = await service.first_page_cached(
            resources.transaction,
            resources.cache,
            owner_id=owner_id,
            limit=limit,
            ttl_s=resources.settings.cache_ttl_s,
        )
        # Built from validated rows when it was cached: sent as is, without a second
        # validation and serialisation of every item on each hit.
        return Response(orjson.dumps(page), media_type="application/json")
    async with resources.transaction() as session:
        todos, next_cursor = await service.list_todos(
            session,
            owner_id=owner_id,
            filters=filters,
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
        return Page(items=[TodoRead.model_validate(t) for t in todos], next_cursor=next_cursor)


@router.get("/{todo_id}", summary="Read one own todo, with its ETag (scope todos:read)",
            responses=_ONE)  # fmt: skip
async def read_todo(
    todo_id: TodoId, _: TodosReader, owner_id: CurrentUserId, request: Request, response: Response
) -> TodoRead:
    resources = resources_of(request)
    body = await service.read_cached(
        resources.sessionmaker,
        resources.cache,
        owner_id=owner_id,
        todo_id=todo_id,
        ttl_s=resources.settings.cache_ttl_s,
    )
    todo = TodoRead.model_validate(body)
    response.headers["ETag"] = f'"{todo.version}"'
    return todo


@router.patch("/{todo_id}", summary="Change an own todo (scope todos:write)",
              responses=_WRITE_ONE)  # fmt: skip
async def update_todo(
    todo: OwnedTodoForUpdate,
    change: TodoUpdate,
    session: Session,
    response: Response,
    if_match: IfMatch = None,
) -> TodoRead:
    updated = await service.update(session, todo=todo, change=change, if_match=if_match)
    return _read(updated, response)


@router.delete(
    "/{todo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an own todo (scope todos:write)",
    responses=_WRITE_ONE,
)
async def delete_todo(
    todo: OwnedTodoForUpdate, session: Session, if_match: IfMatch = None
) -> Response:
    await service.remove(session, todo=todo, if_match=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{todo_id}/complete", summary="Mark an own todo done (scope todos:write)",
             responses=_ONE)  # fmt: skip
async def complete_todo(todo: OwnedTodoForUpdate, session: Session, response: Response) -> TodoRead:
    return _read(await service.set_done(session, todo=todo, done=True), response)


@router.post("/{todo_id}/reopen", summary="Mark an own todo not done (scope todos:write)",
             responses=_ONE)  # fmt: skip
async def reopen_todo(todo: OwnedTodoForUpdate, session: Session, response: Response) -> TodoRead:
    return _read(await service.set_done(session, todo=todo, done=False), response)
