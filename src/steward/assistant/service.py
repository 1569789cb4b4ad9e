"""Conversations, their messages and runs: ownership, history, and a run's bookkeeping.

Over 400 lines for now: issue 21 splits the assistant package (the run lifecycle into one module,
the routers by resource); until then this module stays whole so that the split moves its code
once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Select, Table, Update, bindparam, delete, func, select, true, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import prompts, tokens, tools
from steward.assistant.models import Conversation, Message, Run, RunStatus, UsageDay
from steward.assistant.providers import Provider, Usage
from steward.assistant.resilience import Providers
from steward.assistant.schemas import MessageRead, RunRead, UsageRead
from steward.platform.cache import Cache
from steward.platform.db import new_id
from steward.platform.errors import PROBLEM_BASE, NotFound, QuotaExceeded, UnprocessableContent
from steward.platform.pagination import newest_first

log = structlog.get_logger(__name__)

# How far back a run reads a conversation; older turns would be trimmed anyway.
HISTORY_LIMIT = 200


def _now() -> datetime:
    return datetime.now(UTC)


# --- conversations -------------------------------------------------------------------------


async def create_conversation(
    session: AsyncSession, *, owner_id: uuid.UUID, title: str
) -> Conversation:
    conversation = Conversation(owner_id=owner_id, title=title)
    session.add(conversation)
    await session.flush()
    await session.refresh(conversation)
    return conversation


async def get_conversation(
    session: AsyncSession, *, owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None or conversation.owner_id != owner_id:
        raise NotFound("no such conversation")
    return conversation


async def list_conversations(
    session: AsyncSession, *, owner_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Conversation], str | None]:
    query = select(Conversation).where(Conversation.owner_id == owner_id)
    return await newest_first(
        session, query, at=Conversation.created_at, key=Conversation.id, limit=limit, cursor=cursor
    )


async def rename_conversation(
    session: AsyncSession, *, conversation: Conversation, title: str
) -> Conversation:
    conversation.title = title
    conversation.updated_at = _now()
    await session.flush()
    return conversation


async def delete_conversation(session: AsyncSession, *, conversation: Conversation) -> None:
    await session.execute(delete(Conversation).where(Conversation.id == conversation.id))


async def list_messages(
    session: AsyncSession, *, conversation_id: uuid.UUID, limit: int, after: int | None
) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id)
    if after is not None:
        query = query.where(Message.seq > after)
    return list((await session.execute(query.order_by(Message.seq).limit(limit))).scalars())


# --- runs ----------------------------------------------------------------------------------


def as_chat(message: Message) -> dict[str, Any]:
    """A stored message in the Chat Completions wire format."""
    return _chat(message.role, message.content, message.tool_calls, message.tool_call_id,
                 message.name)  # fmt: skip


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


_HISTORY = _recent(bindparam("conversation_id"))  # built once (see _WITH_HISTORY)


async def history(session: AsyncSession, *, conversation_id: uuid.UUID) -> list[dict[str, Any]]:
    params = {"conversation_id": conversation_id}
    rows = list((await session.execute(_HISTORY, params)).all())
    return _window([tuple(row[1:]) for row in reversed(rows)])


def _with_history() -> Select[Any]:
    recent = _recent(Conversation.id).lateral("recent")
    return (
        select(
            Conversation,
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


# Built once: constructing the lateral subquery copies its columns (with their foreign keys
# and event dispatchers) into reference cycles that only the garbage collector frees, a few
# hundred objects per call, and collector pauses were the tail of time to first token under
# load (bench/RESULTS.md).
_WITH_HISTORY = _with_history()


async def conversation_with_history(
    session: AsyncSession, *, owner_id: uuid.UUID, conversation_id: uuid.UUID
) -> tuple[Conversation, list[dict[str, Any]]]:
    """The caller's conversation (404 for anyone else's) and its history, in one round trip:
    both are read before every provider call."""
    params = {"conversation_id": conversation_id, "owner_id": owner_id}
    rows = list((await session.execute(_WITH_HISTORY, params)).all())
    if not rows:
        raise NotFound("no such conversation")
    return rows[0][0], _window([tuple(row[1:]) for row in rows if row[1] is not None])


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run needs to execute, in any process: ids and names, nothing bound to a session."""

    run_id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    scopes: frozenset[str]
    user_name: str
    provider: str
    model: str
    prompt_name: str

    def caller(self) -> tools.Caller:
        return tools.Caller(user_id=self.user_id, scopes=self.scopes)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "conversation_id": str(self.conversation_id),
            "user_id": str(self.user_id),
            "api_key_id": str(self.api_key_id) if self.api_key_id else None,
            "scopes": sorted(self.scopes),
            "user_name": self.user_name,
            "provider": self.provider,
            "model": self.model,
            "prompt_name": self.prompt_name,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            run_id=uuid.UUID(data["run_id"]),
            conversation_id=uuid.UUID(data["conversation_id"]),
            user_id=uuid.UUID(data["user_id"]),
            api_key_id=uuid.UUID(data["api_key_id"]) if data.get("api_key_id") else None,
            scopes=frozenset(data["scopes"]),
            user_name=data["user_name"],
            provider=data["provider"],
            model=data["model"],
            prompt_name=data["prompt_name"],
        )


@dataclass(frozen=True, slots=True)
class Preloaded:
    """What an interactive run's request already read, so its task need not read it again."""

    prompt: prompts.ActivePrompt
    history: list[dict[str, Any]]


def choose_provider(
    providers: Providers, *, name: str | None, model: str | None
) -> tuple[Provider, str]:
    provider = providers.get(name)
    if provider is None:
        raise UnprocessableContent(
            f"unknown provider {name!r}; available: {providers.names()}",
            errors=[{"loc": ["body", "provider"], "msg": "unknown provider", "type": "value"}],
        )
    allowed = [provider.config.model, *provider.config.models]
    if model is not None and model not in allowed:
        raise UnprocessableContent(
            f"model {model!r} is not offered by {provider.name}; available: {allowed}",
            errors=[{"loc": ["body", "model"], "msg": "unknown model", "type": "value"}],
        )
    return provider, model or provider.config.model


def input_budget(provider: Provider) -> int:
    """Tokens a request may spend on its prompt: the context minus the reply's share."""
    return provider.config.context_window - provider.config.max_output_tokens


async def start_run(
    session: AsyncSession,
    *,
    conversation: Conversation,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    scopes: frozenset[str],
    user_name: str,
    content: str,
    provider: Provider,
    model: str,
    prompt_name: str,
    max_input_tokens: int,
    background: bool,
    cache: Cache | None = None,
    recent: list[dict[str, Any]] | None = None,
) -> tuple[Plan, Preloaded | None]:
    """Check the message fits and plan its run; the caller commits and executes.
    A background run is stored here and waits "queued" for a worker to claim it. An
    interactive one comes back with its prompt and history, not yet stored: its caller
    starts its provider call first, then stores it ("running") with `store_run`."""
    single = tokens.count_text(content, model)
    if single > max_input_tokens:
        raise UnprocessableContent(
            f"the message is about {single} tokens; the limit is {max_input_tokens}",
            errors=[{"loc": ["body", "content"], "msg": "too many tokens", "type": "too_long"}],
        )
    prompt = await prompts.active(session, name=prompt_name, cache=cache)
    system = {"role": "system", "content": prompt.render(user_name=user_name)}
    tool_schemas = [tool.schema() for tool in tools.available(scopes)]
    budget = input_budget(provider) - tokens.count_tools(tool_schemas, model)
    needed = tokens.count_messages([system, {"role": "user", "content": content}], model)
    if needed > budget:
        raise UnprocessableContent(
            f"the message needs about {needed} tokens with the system prompt; "
            f"{provider.name}/{model} allows {budget} for input",
            errors=[{"loc": ["body", "content"], "msg": "too many tokens", "type": "too_long"}],
        )
    # Read before the run is stored: an interactive run is stored by its caller once its
    # provider call has started (store_run), a background one here.
    if background:
        past = None
    elif recent is not None:  # read with the conversation (conversation_with_history)
        past = recent
    else:
        past = await history(session, conversation_id=conversation.id)
    plan = Plan(
        run_id=new_id(),
        conversation_id=conversation.id,
        user_id=user_id,
        api_key_id=api_key_id,
        scopes=scopes,
        user_name=user_name,
        provider=provider.name,
        model=model,
        prompt_name=prompt_name,
    )
    if past is None:
        await store_run(session, plan=plan, prompt=prompt, content=content, background=True)
        return plan, None
    return plan, Preloaded(prompt=prompt, history=[*past, {"role": "user", "content": content}])


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


# One statement, built once: the run, its user message (its foreign key is checked at the
# statement's end, when the run exists) and the conversation's updated_at, in one round
# trip. The ORM's unit of work did this in three, with a few milliseconds of CPU on the
# event loop while the run's provider request was being sent.
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


# Built once (see _WITH_HISTORY): `in_()` with a list makes an expanding parameter anew.
_FINISH_RUN = (
    update(Run)
    .where(
        Run.id == bindparam("run_id"),
        Run.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
    )
    .values(
        status=bindparam("new_status"),
        prompt_tokens=bindparam("new_prompt_tokens"),
        completion_tokens=bindparam("new_completion_tokens"),
        total_tokens=bindparam("new_total_tokens"),
        first_token_at=bindparam("new_first_token_at"),
        finished_at=bindparam("new_finished_at"),
        # None as SQL NULL, as a literal None in values() would be (not JSON null).
        error=bindparam("new_error", type_=JSONB(none_as_null=True)),
    )
    .returning(Run.id)
)


async def finish_run(
    session: AsyncSession,
    *,
    run_id: uuid.UUID,
    status: RunStatus,
    usage: Usage,
    first_token_at: datetime | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record how a run ended; False if it had already ended (a cancel won the race)."""
    result = await session.execute(_FINISH_RUN, {
        "run_id": run_id, "new_status": status.value,
        "new_prompt_tokens": usage.prompt_tokens,
        "new_completion_tokens": usage.completion_tokens,
        "new_total_tokens": usage.total_tokens, "new_first_token_at": first_token_at,
        "new_finished_at": _now(), "new_error": error,
    })  # fmt: skip
    return result.scalar_one_or_none() is not None


async def get_run(session: AsyncSession, *, owner_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    run = await session.get(Run, run_id)
    if run is None or run.owner_id != owner_id:
        raise NotFound("no such run")
    return run


async def run_messages(session: AsyncSession, *, run: Run) -> list[Message]:
    query = select(Message).where(Message.run_id == run.id, Message.role != "user")
    return list((await session.execute(query.order_by(Message.seq))).scalars())


def run_read(run: Run, messages: list[Message]) -> RunRead:
    final = next(
        (m for m in reversed(messages) if m.role == "assistant" and not m.tool_calls), None
    )
    return RunRead(
        id=run.id,
        conversation_id=run.conversation_id,
        status=run.status,
        background=run.background,
        provider=run.provider,
        model=run.model,
        offline=run.provider == "offline",
        prompt_name=run.prompt_name,
        prompt_version=run.prompt_version,
        usage=UsageRead(
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            total_tokens=run.total_tokens,
        ),
        attempts=run.attempts,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        first_token_at=run.first_token_at,
        finished_at=run.finished_at,
        message=MessageRead.model_validate(final) if final is not None else None,
    )


# --- usage and quotas ----------------------------------------------------------------------


def _today() -> date:
    return _now().date()


async def check_quota(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
    per_user: int | None,
    per_key: int | None,
) -> None:
    """Refuse, before any provider call, a caller whose daily token quota is spent."""
    if per_user is None and (per_key is None or api_key_id is None):
        return
    rows = (
        await session.execute(
            select(UsageDay.api_key_id, UsageDay.total_tokens).where(
                UsageDay.day == _today(), UsageDay.user_id == user_id
            )
        )
    ).all()
    spent_user = sum(total for _, total in rows)
    spent_key = sum(total for key, total in rows if key is not None and key == api_key_id)
    now = _now()
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    retry_after = max(1, int((midnight - now).total_seconds()))
    if per_user is not None and spent_user >= per_user:
        raise QuotaExceeded(
            f"daily token quota of {per_user} used up; it resets at 00:00 UTC",
            retry_after=retry_after,
        )
    if per_key is not None and api_key_id is not None and spent_key >= per_key:
        raise QuotaExceeded(
            f"this API key's daily token quota of {per_key} is used up; it resets at 00:00 UTC",
            retry_after=retry_after,
        )


async def usage_days(session: AsyncSession, *, user_id: uuid.UUID, days: int) -> list[UsageDay]:
    since = _today() - timedelta(days=days - 1)
    query = (
        select(UsageDay)
        .where(UsageDay.user_id == user_id, UsageDay.day >= since)
        .order_by(UsageDay.day.desc(), UsageDay.api_key_id.nulls_first())
    )
    return list((await session.execute(query)).scalars())
