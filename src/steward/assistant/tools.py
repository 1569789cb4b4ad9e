"""Tools the model may call. Each acts on the caller's own data with the caller's scopes,
through the owning domain's service, in its own short transaction. Schemas come from the
argument models; a bad call or a failing tool becomes a result the model reads, never a 500.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from steward.knowledge import service as knowledge
from steward.knowledge.schemas import SearchMode
from steward.platform.errors import StewardError
from steward.platform.resources import Resources
from steward.todos import service as todos
from steward.todos.schemas import TodoCreate, TodoRead, TodoUpdate

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose data a tool may touch, and what it may do with it."""

    user_id: uuid.UUID
    scopes: frozenset[str]


class ListTodosArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    done: bool | None = Field(default=None, description="only done (true) or open (false) todos")
    q: str | None = Field(default=None, max_length=200, description="text to search for")
    limit: int = Field(default=10, ge=1, le=50)


class CreateTodoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    due_at: AwareDatetime | None = Field(default=None, description="ISO 8601 with a timezone")
    priority: int = Field(default=0, ge=0, le=3)
    tags: list[str] = Field(default_factory=list, max_length=20)


class CompleteTodoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    todo_id: uuid.UUID


class UpdateTodoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    todo_id: uuid.UUID
    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    due_at: AwareDatetime | None = None
    priority: int | None = Field(default=None, ge=0, le=3)
    done: bool | None = None


class SearchKnowledgeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=1000, description="what to look for")
    k: int = Field(default=5, ge=1, le=10, description="how many passages")


Handler = Callable[[AsyncSession, Caller, Any, Resources], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    scope: str
    handler: Handler

    def schema(self) -> dict[str, Any]:
        return _schema(self)


@functools.cache
def _schema(tool: Tool) -> dict[str, Any]:
    # Generating a JSON schema takes pydantic milliseconds; tools never change at run time.
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.arguments.model_json_schema(),
        },
    }


def _todo(todo: Any) -> dict[str, Any]:
    return TodoRead.model_validate(todo).model_dump(mode="json", exclude={"version"})


async def _list_todos(
    session: AsyncSession, caller: Caller, args: ListTodosArgs, resources: Resources
) -> Any:
    rows, _ = await todos.list_todos(
        session,
        owner_id=caller.user_id,
        filters=todos.TodoFilter(done=args.done, q=args.q),
        limit=args.limit,
    )
    return {"todos": [_todo(row) for row in rows]}


async def _create_todo(
    session: AsyncSession, caller: Caller, args: CreateTodoArgs, resources: Resources
) -> Any:
    created = await todos.create(
        session, owner_id=caller.user_id, todo_in=TodoCreate(**args.model_dump())
    )
    return {"todo": created.body}


async def _complete_todo(
    session: AsyncSession, caller: Caller, args: CompleteTodoArgs, resources: Resources
) -> Any:
    todo = await todos.get(session, owner_id=caller.user_id, todo_id=args.todo_id, for_update=True)
    return {"todo": _todo(await todos.set_done(session, todo=todo, done=True))}


async def _update_todo(
    session: AsyncSession, caller: Caller, args: UpdateTodoArgs, resources: Resources
) -> Any:
    todo = await todos.get(session, owner_id=caller.user_id, todo_id=args.todo_id, for_update=True)
    change = TodoUpdate(**args.model_dump(exclude={"todo_id"}, exclude_unset=True))
    return {"todo": _todo(await todos.update(session, todo=todo, change=change))}


# How much of a passage the model reads, and how much a citation shows.
_PASSAGE_CHARS = 1500
SNIPPET_CHARS = 240


async def _search_knowledge(
    session: AsyncSession, caller: Caller, args: SearchKnowledgeArgs, resources: Resources
) -> Any:
    hits, _ = await knowledge.search(
        session, resources.get(knowledge.Knowledge), owner_id=caller.user_id, q=args.query,
        k=args.k, mode=SearchMode.HYBRID,
    )  # fmt: skip
    # Numbered by the run (execution.py renumbers `sources` across calls); the model cites
    # them as [n].
    return {
        "sources": [
            {"index": i, "document_id": str(hit.document_id), "chunk_id": str(hit.chunk_id),
             "title": hit.title, "text": hit.text[:_PASSAGE_CHARS]}
            for i, hit in enumerate(hits, start=1)
        ],
        "instructions": "Answer from these sources and cite each one you use as [index].",
    }  # fmt: skip


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("list_todos", "List the user's todos, newest first.", ListTodosArgs, "todos:read",
             _list_todos),
        Tool("create_todo", "Create a todo for the user.", CreateTodoArgs, "todos:write",
             _create_todo),
        Tool("complete_todo", "Mark one of the user's todos as done.", CompleteTodoArgs,
             "todos:write", _complete_todo),
        Tool("update_todo", "Change fields of one of the user's todos.", UpdateTodoArgs,
             "todos:write", _update_todo),
        Tool("search_knowledge", "Search the user's documents (and those shared with everyone) "
             "for passages about a question; returns numbered sources to cite as [n].",
             SearchKnowledgeArgs, "knowledge:read", _search_knowledge),
    )
}  # fmt: skip


def available(scopes: frozenset[str]) -> list[Tool]:
    """The tools a caller with `scopes` may use; the model is only told about these."""
    return [tool for tool in TOOLS.values() if tool.scope in scopes]


def _problem(message: str) -> dict[str, Any]:
    return {"error": message}


async def call(
    name: str,
    arguments: str,
    *,
    caller: Caller,
    resources: Resources,
) -> tuple[dict[str, Any], bool]:
    """Run one tool call; returns (result, ok). Never raises for the model's mistakes."""
    tool = TOOLS.get(name)
    if tool is None:
        return _problem(f"unknown tool {name!r}"), False
    if tool.scope not in caller.scopes:
        return _problem(f"not allowed: {name} needs scope {tool.scope!r}"), False
    try:
        parsed = tool.arguments.model_validate(orjson.loads(arguments or "{}"))
    except orjson.JSONDecodeError:
        return _problem("arguments are not valid JSON"), False
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors()
        )
        return _problem(f"invalid arguments: {details}"), False
    try:
        async with resources.transaction() as session:
            result = await tool.handler(session, caller, parsed, resources)
    except StewardError as exc:
        return _problem(exc.detail), False
    log.info("assistant.tool_called", tool=name, user_id=str(caller.user_id))
    return result, True


def encode(result: dict[str, Any]) -> str:
    """A tool result as the message content the model reads."""
    return orjson.dumps(result).decode()
