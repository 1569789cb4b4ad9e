"""Jobs rules: enqueue after commit with an owner, job status for that owner only, and the
dead-letter store (list, replay, discard)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import structlog
from celery import Celery
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.jobs import outbox  # noqa: F401 - provides the Dispatcher that sends
from steward.jobs.models import DeadLetter, Job
from steward.platform.errors import NotFound
from steward.platform.pagination import newest_first
from steward.platform.transactions import Dispatch, after_commit

log = structlog.get_logger(__name__)


async def enqueue(
    session: AsyncSession,
    *,
    task: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    owner_id: uuid.UUID | None = None,
    job_id: str | None = None,
) -> str:
    """The one way to start a task: record it in this transaction (the outbox) and send it
    once the transaction commits; a rollback sends nothing, and a send that never happens is
    swept up (jobs/outbox.py). `owner_id` may read its status. Returns the job id."""
    job = Job(id=job_id or str(uuid.uuid4()), owner_id=owner_id, name=task, args=args or [],
              kwargs=kwargs or {})  # fmt: skip
    session.add(job)
    await session.flush()
    after_commit(session).enqueue(Dispatch(job.id, task, job.args, job.kwargs))
    return job.id


async def status(
    session: AsyncSession, celery: Celery, *, owner_id: uuid.UUID, job_id: str
) -> dict[str, Any]:
    job = await session.get(Job, job_id)
    if job is None or job.owner_id != owner_id:
        raise NotFound("no such job")
    result = celery.AsyncResult(job_id)
    state = await anyio.to_thread.run_sync(lambda: result.state)
    body: dict[str, Any] = {"id": job_id, "name": job.name, "state": state, "result": None,
                            "error": None}  # fmt: skip
    if state == "SUCCESS":
        body["result"] = await anyio.to_thread.run_sync(lambda: result.result)
    elif state in ("FAILURE", "REJECTED"):
        body["error"] = type(result.result).__name__ if result.result is not None else state
    return body


async def list_dead_letters(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[DeadLetter], str | None]:
    return await newest_first(
        session,
        select(DeadLetter),
        at=DeadLetter.failed_at,
        key=DeadLetter.id,
        limit=limit,
        cursor=cursor,
    )


async def get_dead_letter(session: AsyncSession, letter_id: uuid.UUID) -> DeadLetter:
    letter = await session.get(DeadLetter, letter_id)
    if letter is None:
        raise NotFound("no such dead letter")
    return letter


async def replay(session: AsyncSession, *, letter: DeadLetter) -> DeadLetter:
    """Send the task again with its original arguments, after this transaction commits."""
    letter.replay_task_id = await enqueue(
        session, task=letter.task_name, args=letter.args, kwargs=letter.kwargs
    )
    letter.replayed_at = datetime.now(UTC)
    await session.flush()
    log.info("dead_letter.replayed", dead_letter_id=str(letter.id), task=letter.task_name)
    return letter


async def discard(session: AsyncSession, *, letter: DeadLetter) -> None:
    await session.delete(letter)
    await session.flush()
