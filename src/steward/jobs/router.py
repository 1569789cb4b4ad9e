"""HTTP endpoints of the jobs domain: job status for its owner, dead letters for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from steward.accounts.deps import Admin, CurrentUser
from steward.accounts.limits import RateLimited
from steward.jobs import service
from steward.jobs.deps import CeleryApp
from steward.jobs.schemas import DeadLetterRead, JobRead
from steward.platform.api import API_V1
from steward.platform.deps import Session
from steward.platform.inputs import Text
from steward.platform.pagination import Cursor, Limit, Page

router = APIRouter(tags=["jobs"], dependencies=[RateLimited])

LetterId = Annotated[uuid.UUID, Path(description="the dead letter's id")]


@router.get(
    f"{API_V1}/jobs/{{job_id}}",
    summary="A job's state, result or error (the user who started it)",
    responses={404: {"description": "no such job of yours"}},
)
async def read_job(
    job_id: Annotated[Text, Path(max_length=64)], user: CurrentUser, session: Session,
    celery: CeleryApp,
) -> JobRead:  # fmt: skip
    return JobRead(**await service.status(session, celery, owner_id=user.id, job_id=job_id))


@router.get(f"{API_V1}/admin/dead-letters", summary="Tasks that failed for good (admin)")
async def list_dead_letters(
    _: Admin, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[DeadLetterRead]:
    rows, next_cursor = await service.list_dead_letters(session, limit=limit, cursor=cursor)
    return Page(items=[DeadLetterRead.of(r) for r in rows], next_cursor=next_cursor)


@router.post(
    f"{API_V1}/admin/dead-letters/{{letter_id}}/replay",
    summary="Run a dead-lettered task again with its arguments (admin)",
    status_code=status.HTTP_202_ACCEPTED,
)
async def replay_dead_letter(letter_id: LetterId, _: Admin, session: Session) -> DeadLetterRead:
    letter = await service.get_dead_letter(session, letter_id)
    return DeadLetterRead.of(await service.replay(session, letter=letter))


@router.delete(
    f"{API_V1}/admin/dead-letters/{{letter_id}}",
    summary="Discard a dead letter (admin)",
    status_code=status.HTTP_204_NO_CONTENT,
)
async def discard_dead_letter(letter_id: LetterId, _: Admin, session: Session) -> Response:
    await service.discard(session, letter=await service.get_dead_letter(session, letter_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
