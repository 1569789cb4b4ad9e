"""Shapes of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from steward.jobs.models import DeadLetter


class JobRead(BaseModel):
    id: str
    name: str
    state: str
    result: Any = None
    error: str | None = None


class DeadLetterRead(BaseModel):
    id: uuid.UUID
    task_id: str
    task_name: str
    task_args: list[Any]
    task_kwargs: dict[str, Any]
    exception: str
    attempts: int
    failed_at: datetime
    replayed_at: datetime | None
    replay_task_id: str | None

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterRead:
        return cls(
            id=letter.id,
            task_id=letter.task_id,
            task_name=letter.task_name,
            task_args=letter.args,
            task_kwargs=letter.kwargs,
            exception=letter.exception,
            attempts=letter.attempts,
            failed_at=letter.failed_at,
            replayed_at=letter.replayed_at,
            replay_task_id=letter.replay_task_id,
        )
