"""Todo rules: creation (idempotent), listing with keyset pagination and filters, updates
with optimistic concurrency, completion, deletion. Every write emits a change event.

A little over 400 lines, kept whole: it is one concept (a todo's rules), and the cached
reads at its end sit next to the queries they cache."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import ColumnElement, Select, cast, delete, func, or_, select, text, tuple_
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.jobs import service as jobs
from steward.platform.cache import MISSING, Cache
from steward.platform.errors import NotFound, PreconditionFailed, UnprocessableContent
from steward.platform.pagination import (
    cursor_instant,
    cursor_int32,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
)
from steward.platform.transactions import Transaction
from steward.todos.events import cache_namespace, todo_changed
from steward.todos.models import UNDATED, UNDATED_SQL, IdempotencyKey, Todo
from steward.todos.schemas import TodoCreate, TodoRead, TodoSort, TodoUpdate

log = structlog.get_logger(__name__)

IDEMPOTENCY_TTL = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(UTC)


def _due_key() -> ColumnElement[datetime]:
    return func.coalesce(Todo.due_at, text(UNDATED_SQL))


@dataclass(frozen=True, slots=True)
class Created:
    """A created todo's response, and whether it is the replay of an earlier request."""

    body: dict[str, Any]
    replayed: bool


async def get(session: AsyncSession, *, owner_id: uuid.UUID, todo_id: uuid.UUID,
              for_update: bool = False) -> Todo:  # fmt: skip
    """The owner's todo; another user's todo is indistinguishable from a missing one."""
    query = select(Todo).where(Todo.id == todo_id, Todo.owner_id == owner_id)
    if for_update:
        query = query.with_for_update()
    todo = (await session.execute(query)).scalar_one_or_none()
    if todo is None:
        raise NotFound("no such todo")
    return todo


async def create(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    todo_in: TodoCreate,
    idempotency_key: str | None = None,
) -> Created:
    if idempotency_key is None:
        todo = await _insert(session, owner_id=owner_id, todo_in=todo_in)
        return Created(body=TodoRead.model_validate(todo).model_dump(mode="json"), replayed=False)

    request_hash = hashlib.sha256(
        orjson.dumps(todo_in.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    for _ in range(2):
        # A concurrent holder of the same key makes this INSERT wait for its transaction:
        # if that commits, the conflict hands us its stored response; if it rolls back, the
        # key is ours. PostgreSQL's unique index is the lock, so N API processes agree.
        claimed = (
            await session.execute(
                insert(IdempotencyKey)
                .values(owner_id=owner_id, key=idempotency_key, request_hash=request_hash)
                .on_conflict_do_nothing(index_elements=["owner_id", "key"])
                .returning(IdempotencyKey.key)
            )
        ).scalar_one_or_none()
        if claimed is not None:
            todo = await _insert(session, owner_id=owner_id, todo_in=todo_in)
            body = TodoRead.model_validate(todo).model_dump(mode="json")
            await session.execute(
                sql_update(IdempotencyKey)
                .where(IdempotencyKey.owner_id == owner_id, IdempotencyKey.key == idempotency_key)
                .values(status_code=201, response=body)
            )
            return Created(body=body, replayed=False)

        stored = (
            await session.execute(
                select(IdempotencyKey).where(
                    IdempotencyKey.owner_id == owner_id, IdempotencyKey.key == idempotency_key
                )
            )
        ).scalar_one_or_none()
        if stored is None:
            continue
        if stored.created_at < _now() - IDEMPOTENCY_TTL:
            await session.delete(stored)
            await session.flush()
            continue
        if stored.request_hash != request_hash:
            raise UnprocessableContent(
                "this Idempotency-Key was already used with a different request body",
                errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused", "type": "reuse"}],
            )
        assert stored.response is not None
        log.info("todo.idempotent_replay", owner_id=str(owner_id))
        return Created(body=stored.response, replayed=True)
    raise UnprocessableContent("Idempotency-Key could not be claimed; retry the request")


async def _insert(session: AsyncSession, *, owner_id: uuid.UUID, todo_in: TodoCreate) -> Todo:
    now = _now()
    todo = Todo(
        owner_id=owner_id,
        title=todo_in.title,
        description=todo_in.description,
        due_at=todo_in.due_at,
        priority=todo_in.priority,
        tags=todo_in.tags,
        remind_at=todo_in.remind_at,
        done=False,
        created_at=now,
        updated_at=now,
        version=1,
    )
    session.add(todo)
    await session.flush()
    todo_changed(session, "todo.created", todo)
    await _remind_if_due(session, todo)
    log.info("todo.created", todo_id=str(todo.id))
    return todo


# The task that hands out a user's due reminders (notifications' `send_reminders`).
SEND_REMINDERS = "steward.reminders.send"


async def _remind_if_due(session: AsyncSession, todo: Todo) -> None:
    """A reminder already due is sent now, not at the next sweep (up to a minute later).
    Handing out stays exactly-once: the task claims due reminders under row locks."""
    if todo.remind_at is not None and todo.remind_at <= _now() and not todo.done:
        await jobs.enqueue(session, task=SEND_REMINDERS, args=[str(todo.owner_id)])


def check_version(todo: Todo, expected: str | None) -> None:
    """Compare an `If-Match` header with the todo's current ETag; 412 when stale."""
    if expected is None:
        return
    candidates = {tag.strip().removeprefix("W/") for tag in expected.split(",")}
    if "*" in candidates or etag(todo) in candidates:
        return
    raise PreconditionFailed(
        f"todo has changed (current ETag {etag(todo)}); read it again and retry"
    )


def etag(todo: Todo) -> str:
    return f'"{todo.version}"'


async def update(
    session: AsyncSession, *, todo: Todo, change: TodoUpdate, if_match: str | None = None
) -> Todo:
    check_version(todo, if_match)
    values = change.model_dump(exclude_unset=True)
    if "title" in values and values["title"] is None:
        raise UnprocessableContent(
            "title cannot be null",
            errors=[{"loc": ["body", "title"], "msg": "cannot be null", "type": "null"}],
        )
    done = values.pop("done", None)
    for field in ("description", "priority", "tags"):
        if field in values and values[field] is None:
            values.pop(field)
    for field, value in values.items():
        setattr(todo, field, value)
    if done is not None:
        _set_done(todo, done)
    await _touch(session, todo)
    if "remind_at" in values:
        await _remind_if_due(session, todo)
    return todo


async def set_done(session: AsyncSession, *, todo: Todo, done: bool) -> Todo:
    if todo.done == done:
        return todo
    _set_done(todo, done)
    return await _touch(session, todo)


def _set_done(todo: Todo, done: bool) -> None:
    if todo.done != done:
        todo.done = done
        todo.done_at = _now() if done else None


async def _touch(session: AsyncSession, todo: Todo) -> Todo:
    todo.version += 1
    todo.updated_at = _now()
    await session.flush()
    todo_changed(session, "todo.updated", todo)
    return todo


async def remove(session: AsyncSession, *, todo: Todo, if_match: str | None = None) -> None:
    check_version(todo, if_match)
    await session.execute(delete(Todo).where(Todo.id == todo.id))
    todo_changed(session, "todo.deleted", todo)
    log.info("todo.deleted", todo_id=str(todo.id))


@dataclass(frozen=True, slots=True)
class TodoFilter:
    done: bool | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    tags: tuple[str, ...] = ()
    q: str | None = None


def _sort_columns(sort: TodoSort) -> list[Any]:
    field = sort.value.lstrip("-")
    if field == "due_at":
        return [_due_key(), Todo.id]
    if field == "priority":
        return [Todo.priority, Todo.created_at, Todo.id]
    return [Todo.created_at, Todo.id]


def _cursor_values(todo: Todo, sort: TodoSort) -> list[Any]:
    field = sort.value.lstrip("-")
    if field == "due_at":
        return [todo.due_at.isoformat() if todo.due_at else None, str(todo.id)]
    if field == "priority":
        return [todo.priority, todo.created_at.isoformat(), str(todo.id)]
    return [todo.created_at.isoformat(), str(todo.id)]


def _parse_cursor(cursor: str, sort: TodoSort) -> list[Any]:
    values = decode_cursor(cursor)
    raw = values.get("k")
    if values.get("s") != sort.value or not isinstance(raw, list):
        raise UnprocessableContent(
            "cursor belongs to another sort order or is malformed; start from the first page",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
        )
    field = sort.value.lstrip("-")
    try:
        if field == "due_at":
            due = cursor_instant(raw[0]) if raw[0] is not None else UNDATED
            return [due, uuid.UUID(raw[1])]
        if field == "priority":
            return [cursor_int32(raw[0]), cursor_instant(raw[1]), uuid.UUID(raw[2])]
        return [cursor_instant(raw[0]), uuid.UUID(raw[1])]
    except (IndexError, TypeError, ValueError):
        raise invalid_cursor() from None


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filtered(owner_id: uuid.UUID, filters: TodoFilter) -> Select[Todo]:
    query = select(Todo).where(Todo.owner_id == owner_id)
    if filters.done is not None:
        query = query.where(Todo.done.is_(filters.done))
    if filters.due_before is not None:
        query = query.where(Todo.due_at < filters.due_before)
    if filters.due_after is not None:
        query = query.where(Todo.due_at > filters.due_after)
    if filters.tags:
        query = query.where(Todo.tags.contains(cast(list(filters.tags), Todo.tags.type)))
    if filters.q:
        pattern = f"%{_escape_like(filters.q)}%"
        query = query.where(
            or_(
                Todo.title.ilike(pattern, escape="\\"), Todo.description.ilike(pattern, escape="\\")
            )
        )
    return query


async def list_todos(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    filters: TodoFilter,
    sort: TodoSort = TodoSort.CREATED_DESC,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[Todo], str | None]:
    """One page in a stable order (the id breaks ties), continuing after `cursor`."""
    columns = _sort_columns(sort)
    descending = sort.value.startswith("-")
    query = _filtered(owner_id, filters)
    if cursor is not None:
        after = _parse_cursor(cursor, sort)
        key = tuple_(*columns)
        query = query.where(key < tuple_(*after) if descending else key > tuple_(*after))
    order = [c.desc() for c in columns] if descending else [c.asc() for c in columns]
    rows = list((await session.execute(query.order_by(*order).limit(limit + 1))).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"s": sort.value, "k": _cursor_values(rows[-1], sort)})
    return rows, next_cursor


async def purge_idempotency_keys(session: AsyncSession) -> int:
    """Drop stored responses older than the replay window (a periodic job calls this)."""
    result = await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < _now() - IDEMPOTENCY_TTL)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def read_cached(
    transaction: Transaction, cache: Cache, *, owner_id: uuid.UUID, todo_id: uuid.UUID, ttl_s: float
) -> dict[str, Any]:
    """One todo as its JSON body, from the owner's cache; absent ids are cached briefly
    too, so probing random ids does not reach the database every time. The cached reads
    take what opens a transaction: a hit opens none."""

    async def load() -> Any:
        async with transaction() as session:
            todo = (
                await session.execute(
                    select(Todo).where(Todo.id == todo_id, Todo.owner_id == owner_id)
                )
            ).scalar_one_or_none()
            return (
                MISSING if todo is None else TodoRead.model_validate(todo).model_dump(mode="json")
            )

    body = await cache.get_or_compute(
        cache_namespace(owner_id), f"todo:{todo_id}", load, ttl_s=ttl_s, kind="todo"
    )
    if body is MISSING:
        raise NotFound("no such todo")
    result: dict[str, Any] = body
    return result


async def first_page_cached(
    transaction: Transaction, cache: Cache, *, owner_id: uuid.UUID, limit: int, ttl_s: float
) -> dict[str, Any]:
    """The unfiltered newest-first first page, the list a client opens with."""

    async def load() -> Any:
        async with transaction() as session:
            todos, next_cursor = await list_todos(
                session, owner_id=owner_id, filters=TodoFilter(), limit=limit
            )
        return {
            "items": [TodoRead.model_validate(t).model_dump(mode="json") for t in todos],
            "next_cursor": next_cursor,
        }

    page: dict[str, Any] = await cache.get_or_compute(
        cache_namespace(owner_id), f"first:{limit}", load, ttl_s=ttl_s, kind="todos_page"
    )
    return page


@dataclass(frozen=True, slots=True)
class DueReminder:
    todo_id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    remind_at: datetime


async def owners_with_due_reminders(session: AsyncSession, *, now: datetime) -> list[uuid.UUID]:
    result = await session.execute(
        select(Todo.owner_id)
        .where(
            Todo.remind_at.is_not(None),
            Todo.remind_at <= now,
            Todo.reminded_at.is_distinct_from(Todo.remind_at),
            Todo.done.is_(False),
        )
        .distinct()
    )
    return list(result.scalars())


async def claim_due_reminders(
    session: AsyncSession, *, owner_id: uuid.UUID, now: datetime
) -> list[DueReminder]:
    """The owner's due reminders, locked and marked as sent in this transaction (skipping
    rows another worker holds), so each (todo, remind_at) is handed out once."""
    rows = (
        await session.execute(
            select(Todo)
            .where(
                Todo.owner_id == owner_id,
                Todo.remind_at.is_not(None),
                Todo.remind_at <= now,
                Todo.reminded_at.is_distinct_from(Todo.remind_at),
                Todo.done.is_(False),
            )
            .with_for_update(skip_locked=True)
        )
    ).scalars()
    due = []
    for todo in rows:
        assert todo.remind_at is not None
        due.append(DueReminder(todo.id, todo.owner_id, todo.title, todo.remind_at))
        todo.reminded_at = todo.remind_at
    await session.flush()
    return due
