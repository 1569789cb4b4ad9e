"""Conversations, the reading of runs, and token quotas: the assistant's rules that are not
a run's lifecycle (that is `runs.py`)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import repository
from steward.assistant.models import Conversation, Message, Run, UsageDay
from steward.assistant.schemas import Citation, MessageRead, RunRead, UsageRead
from steward.platform.errors import NotFound, QuotaExceeded
from steward.platform.pagination import newest_first


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
    rows = await repository.spent_today(session, user_id=user_id, day=_today())
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
    return await repository.usage_days(session, user_id=user_id, since=since)
