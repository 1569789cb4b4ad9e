"""Dependencies of the jobs domain."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from steward.jobs.outbox import Outbox
from steward.platform.deps import resources_of


async def celery_app(request: Request) -> Celery:
    """The Celery app of this process's settings (what sends jobs and reads their results)."""
    return resources_of(request).get(Outbox).celery


CeleryApp = Annotated[Celery, Depends(celery_app)]
