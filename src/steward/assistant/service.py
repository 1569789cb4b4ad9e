"""Conversations, the reading of runs, and token quotas: the assistant's rules that are not
a run's lifecycle (that is `runs.py`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import repository
from steward.assistant.models import Conversation, Message, Run, UsageDay
from steward.assistant.schemas import Citation, MessageRead, RunRead, UsageRead
from steward.platform.errors import NotFound, QuotaExceeded
from steward.platform.pagination import newest_first
from steward.settings import Settings


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
    return await repository.list_messages(
        session, conversation_id=conversation_id, limit=limit, after=after
    )


# --- runs, as read back --------------------------------------------------------------------


async def read_run(session: AsyncSession, *, owner_id: uuid.UUID, run_id: uuid.UUID) -> RunRead:
    """The caller's run (404 for anyone else's) with its final message."""
    run = await repository.get_run(session, owner_id=owner_id, run_id=run_id)
    return run_read(run, await repository.run_messages(session, run=run))


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
            cached_tokens=run.cached_tokens,
            reasoning_tokens=run.reasoning_tokens,
            cost=None if run.cost is None else float(run.cost),
            currency=run.currency,
        ),
        attempts=run.attempts,
        error=run.error,
        citations=[Citation.model_validate(c) for c in run.citations or []],
        reasoning=run.reasoning,
        created_at=run.created_at,
        started_at=run.started_at,
        first_token_at=run.first_token_at,
        finished_at=run.finished_at,
        message=MessageRead.model_validate(final) if final is not None else None,
    )


# --- usage and quotas ----------------------------------------------------------------------


def _today() -> date:
    return _now().date()


@dataclass(frozen=True, slots=True)
class Spent:
    """What a user, and one of their keys, used today."""

    user_tokens: int
    user_cost: Decimal
    key_tokens: int
    key_cost: Decimal


async def spent_today(
    session: AsyncSession, *, user_id: uuid.UUID, api_key_id: uuid.UUID | None
) -> Spent:
    rows = await repository.spent_today(session, user_id=user_id, day=_today())
    mine = [(tokens, cost) for key, tokens, cost in rows if key is not None and key == api_key_id]
    return Spent(
        user_tokens=sum(tokens for _, tokens, _ in rows),
        user_cost=sum((cost for _, _, cost in rows), Decimal(0)),
        key_tokens=sum(tokens for tokens, _ in mine),
        key_cost=sum((cost for _, cost in mine), Decimal(0)),
    )


async def check_quota(
    session: AsyncSession,
    settings: Settings,
    *,
    user_id: uuid.UUID,
    api_key_id: uuid.UUID | None,
) -> None:
    """Refuse, before any provider call, a caller whose daily token or cost quota is spent."""
    keyed = api_key_id is not None
    user_quotas = (settings.assistant_daily_tokens_per_user, settings.assistant_daily_cost_per_user)
    key_quotas = (settings.assistant_daily_tokens_per_key, settings.assistant_daily_cost_per_key)
    if all(q is None for q in user_quotas) and (not keyed or all(q is None for q in key_quotas)):
        return
    spent = await spent_today(session, user_id=user_id, api_key_id=api_key_id)
    now = _now()
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    retry_after = max(1, int((midnight - now).total_seconds()))
    currency = settings.currency or ""
    checks: list[tuple[float | None, int | Decimal, str]] = [
        (settings.assistant_daily_tokens_per_user, spent.user_tokens, "daily token quota of {}"),
        (settings.assistant_daily_cost_per_user, spent.user_cost,
         f"daily spending quota of {{}} {currency}"),
    ]  # fmt: skip
    if keyed:
        checks += [
            (settings.assistant_daily_tokens_per_key, spent.key_tokens,
             "this API key's daily token quota of {}"),
            (settings.assistant_daily_cost_per_key, spent.key_cost,
             f"this API key's daily spending quota of {{}} {currency}"),
        ]  # fmt: skip
    for quota, used, words in checks:
        if quota is not None and used >= Decimal(str(quota)):
            raise QuotaExceeded(
                f"{words.format(quota).rstrip()} is used up; it resets at 00:00 UTC",
                retry_after=retry_after,
            )


async def usage_days(session: AsyncSession, *, user_id: uuid.UUID, days: int) -> list[UsageDay]:
    since = _today() - timedelta(days=days - 1)
    return await repository.usage_days(session, user_id=user_id, since=since)
