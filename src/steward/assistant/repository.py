"""The assistant's queries: conversations, messages, runs and usage rows.

Some statements are built once, at import, and reused with bound parameters: building a
statement with a lateral subquery or CTEs leaves reference cycles (columns copied with their
foreign keys and event dispatchers) that only the garbage collector frees, and the
collector's pauses were the tail of time to first token under load (bench/RESULTS.md,
"Streams"). The ORM's unit of work also took three round trips where one statement takes one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    Insert,
    Select,
    String,
    Table,
    Text,
    Update,
    Uuid,
    bindparam,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import User
from steward.assistant import prompts
from steward.assistant.models import Conversation, Message, Run, RunStatus, UsageDay
from steward.assistant.plan import Plan
from steward.assistant.providers import Usage
from steward.platform.db import new_id
from steward.platform.errors import PROBLEM_BASE, NotFound

# How far back a run reads a conversation; older turns would be trimmed anyway.
HISTORY_LIMIT = 200


def _now() -> datetime:
    return datetime.now(UTC)


# --- history -------------------------------------------------------------------------------


def _chat(
    role: str,
    content: str | None,
    tool_calls: list[dict[str, Any]] | None,
    tool_call_id: str | None,
    name: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        out["tool_calls"] = tool_calls
    if role == "tool":
        out["tool_call_id"] = tool_call_id
        if name:
            out["name"] = name
    return out


def _recent(conversation_id: Any) -> Select[Any]:
    """The newest messages a call is built from (columns, not ORM objects), newest first."""
    return (
        select(
            Message.seq, Message.role, Message.content, Message.tool_calls, Message.tool_call_id,
            Message.name,
        )
        .where(Message.conversation_id == conversation_id, Message.role != "system")
        .order_by(Message.seq.desc())
        .limit(HISTORY_LIMIT)
    )  # fmt: skip


def _window(rows: list[Any]) -> list[dict[str, Any]]:
    """Oldest first, from a user message: a window that starts mid-turn would hand the
    model a tool result without its call."""
    start = next((i for i, row in enumerate(rows) if row[0] == "user"), len(rows))
    return [_chat(*row) for row in rows[start:]]


_HISTORY = _recent(bindparam("conversation_id"))  # built once (see the docstring)


async def history(session: AsyncSession, *, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    params = {"conversation_id": conversation_id}
    rows = list((await session.execute(_HISTORY, params)).all())
    return _window([tuple(row[1:]) for row in reversed(rows)])


def _with_history() -> Select[Any]:
    recent = _recent(Conversation.id).lateral("recent")
    return (
        select(
            Conversation.id,
            recent.c.role,
            recent.c.content,
            recent.c.tool_calls,
            recent.c.tool_call_id,
            recent.c.name,
        )
        .outerjoin(recent, true())
        .where(
            Conversation.id == bindparam("conversation_id"),
            Conversation.owner_id == bindparam("owner_id"),
        )
        .order_by(recent.c.seq)
    )


_WITH_HISTORY = _with_history()


async def conversation_with_history(
    session: AsyncSession, *, owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> tuple[uuid.UUID, list[dict[str, Any]]]:
    """The caller's conversation's id (404 for anyone else's) and its history, in one round
    trip: both are read before every provider call (columns, not an ORM object: this runs
    for every message sent)."""
    params = {"conversation_id": conversation_id, "owner_id": owner_id}
    rows = list((await session.execute(_WITH_HISTORY, params)).all())
    if not rows:
        raise NotFound("no such conversation")
    return rows[0][0], _window([tuple(row[1:]) for row in rows if row[1] is not None])


async def list_messages(
    session: AsyncSession, *, conversation_id: uuid.UUID, limit: int, after: int | None
) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id)
    if after is not None:
        query = query.where(Message.seq > after)
    return list((await session.execute(query.order_by(Message.seq).limit(limit))).scalars())


# --- runs ----------------------------------------------------------------------------------


def _store_run() -> Update:
    runs, messages, conversations = (
        cast(Table, model.__table__) for model in (Run, Message, Conversation)
    )
    new_run = (
        insert(runs)
        .values(
            id=bindparam("of_run"), conversation_id=bindparam("of_conversation"),
            owner_id=bindparam("run_owner_id"), api_key_id=bindparam("run_api_key_id"),
            status=bindparam("run_status"), started_at=bindparam("run_started_at"),
            attempts=bindparam("run_attempts"), background=bindparam("run_background"),
            provider=bindparam("run_provider"), model=bindparam("run_model"),
            prompt_name=bindparam("run_prompt_name"),
            prompt_version=bindparam("run_prompt_version"),
        )
        .cte("new_run")
    )  # fmt: skip
    new_message = (
        insert(messages)
        .values(
            id=bindparam("message_id"), conversation_id=bindparam("of_conversation"),
            run_id=bindparam("of_run"), role="user",
            content=bindparam("message_content"),
        )
        .cte("new_message")
    )  # fmt: skip
    return (
        update(conversations)
        .where(conversations.c.id == bindparam("of_conversation"))
        .values(updated_at=func.now())
        .add_cte(new_run)
        .add_cte(new_message)
    )


# The run, its user message (its foreign key is checked at the statement's end, when the
# run exists) and the conversation's updated_at, in one statement.
_STORE_RUN = _store_run()


async def store_run(
    session: AsyncSession,
    *,
    plan: Plan,
    prompt: prompts.ActivePrompt,
    content: str,
    background: bool,
) -> None:
    """Write a new run and the user message that asked for it (the caller commits)."""
    await session.execute(_STORE_RUN, {
        "of_run": plan.run_id, "of_conversation": plan.conversation_id,
        "run_owner_id": plan.user_id, "run_api_key_id": plan.api_key_id,
        "run_status": (RunStatus.QUEUED if background else RunStatus.RUNNING).value,
        "run_started_at": None if background else _now(), "run_attempts": 0 if background else 1,
        "run_background": background, "run_provider": plan.provider, "run_model": plan.model,
        "run_prompt_name": prompt.name, "run_prompt_version": prompt.version,
        "message_id": new_id(), "message_content": content,
    })  # fmt: skip


async def claim_run(session: AsyncSession, *, run_id: uuid.UUID, streamed: bool | None) -> str:
    """Take a run for execution: "start" (it was queued), "retry" (an earlier attempt died
    before streaming anything), "lost" (an earlier attempt died mid-stream: recorded as
    failed here) or "ended" (finished or cancelled meanwhile). `streamed` says whether the
    run's event stream holds any output; None when that cannot be known."""
    run = (
        await session.execute(select(Run).where(Run.id == run_id).with_for_update())
    ).scalar_one_or_none()
    if run is None or RunStatus(run.status).finished:
        return "ended"
    outcome = "start"
    if run.status == RunStatus.RUNNING.value:
        if streamed is not False:
            run.status = RunStatus.FAILED.value
            run.finished_at = _now()
            run.error = {
                "type": PROBLEM_BASE + "run-interrupted",
                "title": "Internal Server Error",
                "status": 500,
                "detail": "the process executing this run stopped after the answer had begun",
            }
            await session.flush()
            return "lost"
        outcome = "retry"
    run.status = RunStatus.RUNNING.value
    run.started_at = _now()
    run.attempts += 1
    await session.flush()
    return outcome


async def reap_runs(session: AsyncSession, *, older_than: datetime) -> int:
    """Runs left queued or running by processes that died: marked failed."""
    result = await session.execute(
        update(Run)
        .where(
            Run.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
            Run.created_at < older_than,
        )
        .values(
            status=RunStatus.FAILED.value,
            finished_at=_now(),
            error={
                "type": PROBLEM_BASE + "run-interrupted",
                "title": "Internal Server Error",
                "status": 500,
                "detail": "the run did not finish in time; the process executing it stopped",
            },
        )
        .returning(Run.id)
    )
    return len(result.all())


async def add_message(
    session: AsyncSession,
    *,
    plan: Plan,
    role: str,
    content: str,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
    name: str | None = None,
) -> Message:
    message = Message(
        conversation_id=plan.conversation_id,
        run_id=plan.run_id,
        role=role,
        content=content,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        name=name,
    )
    session.add(message)
    await session.flush()
    return message


# Two comparisons, not `in_()`: an IN list is an expanding parameter, rendered again on
# every execution (a tenth of this statement's ORM time in a burst of run starts).
_FINISHED = (
    update(Run)
    .where(
        Run.id == bindparam("run_id"),
        or_(Run.status == RunStatus.QUEUED.value, Run.status == RunStatus.RUNNING.value),
    )
    .values(
        status=bindparam("new_status"),
        prompt_tokens=bindparam("new_prompt_tokens"),
        completion_tokens=bindparam("new_completion_tokens"),
        total_tokens=bindparam("new_total_tokens"),
        cached_tokens=bindparam("new_cached_tokens"),
        reasoning_tokens=bindparam("new_reasoning_tokens"),
        cost=bindparam("new_cost"),
        currency=bindparam("new_currency"),
        first_token_at=bindparam("new_first_token_at"),
        finished_at=bindparam("new_finished_at"),
        # None as SQL NULL, as a literal None in values() would be (not JSON null).
        error=bindparam("new_error", type_=JSONB(none_as_null=True)),
        citations=bindparam("new_citations", type_=JSONB()),
        reasoning=bindparam("new_reasoning"),
    )
    .returning(Run.id, Run.conversation_id)
)


def _finish_with_answer() -> Insert:
    finished = _FINISHED.cte("finished")
    messages = cast(Table, Message.__table__)
    answer = select(
        bindparam("answer_id", type_=Uuid()), finished.c.conversation_id, finished.c.id,
        literal("assistant", type_=String()), bindparam("answer", type_=Text()),
    )  # fmt: skip
    return (
        insert(messages)
        .from_select(["id", "conversation_id", "run_id", "role", "content"], answer)
        .returning(messages.c.run_id)
    )


# The run's end and its answer in one statement: the answer is stored only if this is
# what ended the run (a cancel that got there first keeps the run as it left it).
_FINISH_WITH_ANSWER = _finish_with_answer()


async def finish_run(
    session: AsyncSession,
    *,
    run_id: uuid.UUID,
    status: RunStatus,
    usage: Usage,
    cost: Decimal | None = None,
    currency: str | None = None,
    first_token_at: datetime | None = None,
    error: dict[str, Any] | None = None,
    citations: list[dict[str, Any]] | None = None,
    answer: str | None = None,
    reasoning: str | None = None,
) -> bool:
    """Record how a run ended, with its `answer` (the last assistant message) if it has one;
    False if it had already ended (a cancel won the race)."""
    params: dict[str, Any] = {
        "run_id": run_id, "new_status": status.value,
        "new_prompt_tokens": usage.prompt_tokens,
        "new_completion_tokens": usage.completion_tokens,
        "new_total_tokens": usage.total_tokens, "new_first_token_at": first_token_at,
        "new_cached_tokens": usage.cached_tokens, "new_reasoning_tokens": usage.reasoning_tokens,
        "new_cost": cost, "new_currency": None if cost is None else currency,
        "new_finished_at": _now(), "new_error": error, "new_citations": citations or [],
        "new_reasoning": reasoning,
    }  # fmt: skip
    if answer is None:
        result = await session.execute(_FINISHED, params)
    else:
        params |= {"answer_id": new_id(), "answer": answer}
        result = await session.execute(_FINISH_WITH_ANSWER, params)
    return result.first() is not None


async def get_run(session: AsyncSession, *, owner_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    run = await session.get(Run, run_id)
    if run is None or run.owner_id != owner_id:
        raise NotFound("no such run")
    return run


async def run_messages(session: AsyncSession, *, run: Run) -> list[Message]:
    query = select(Message).where(Message.run_id == run.id, Message.role != "user")
    return list((await session.execute(query.order_by(Message.seq))).scalars())


# --- usage ---------------------------------------------------------------------------------


async def spent_today(
    session: AsyncSession, *, user_id: uuid.UUID, day: date
) -> list[tuple[uuid.UUID | None, int, Decimal]]:
    """(API key or None, total tokens, cost) rows of the user's usage on `day`."""
    rows = await session.execute(
        select(UsageDay.api_key_id, UsageDay.total_tokens, UsageDay.cost).where(
            UsageDay.day == day, UsageDay.user_id == user_id
        )
    )
    return [(key, int(total), Decimal(cost)) for key, total, cost in rows.all()]


async def usage_days(session: AsyncSession, *, user_id: uuid.UUID, since: date) -> list[UsageDay]:
    query = (
        select(UsageDay)
        .where(UsageDay.user_id == user_id, UsageDay.day >= since)
        .order_by(UsageDay.day.desc(), UsageDay.api_key_id.nulls_first())
    )
    return list((await session.execute(query)).scalars())


_COUNTS = (
    func.sum(UsageDay.requests).label("requests"),
    func.sum(UsageDay.prompt_tokens).label("prompt_tokens"),
    func.sum(UsageDay.completion_tokens).label("completion_tokens"),
    func.sum(UsageDay.total_tokens).label("total_tokens"),
    func.sum(UsageDay.cached_tokens).label("cached_tokens"),
    func.sum(UsageDay.reasoning_tokens).label("reasoning_tokens"),
    func.sum(UsageDay.cost).label("cost"),
)


async def usage_totals(session: AsyncSession, *, since: date) -> list[dict[str, Any]]:
    """Every user's usage added up per day since `since`, newest day first."""
    query = (
        select(UsageDay.day, func.count(func.distinct(UsageDay.user_id)).label("users"), *_COUNTS)
        .where(UsageDay.day >= since)
        .group_by(UsageDay.day)
        .order_by(UsageDay.day.desc())
    )
    return [dict(row) for row in (await session.execute(query)).mappings()]


async def usage_by_user(session: AsyncSession, *, since: date, limit: int) -> list[dict[str, Any]]:
    """Usage per day and user (their keys together), newest day first, then most tokens."""
    query = (
        select(UsageDay.day, UsageDay.user_id, User.email, *_COUNTS)
        .join(User, User.id == UsageDay.user_id)
        .where(UsageDay.day >= since)
        .group_by(UsageDay.day, UsageDay.user_id, User.email)
        .order_by(UsageDay.day.desc(), func.sum(UsageDay.total_tokens).desc(), UsageDay.user_id)
        .limit(limit)
    )
    return [dict(row) for row in (await session.execute(query)).mappings()]
