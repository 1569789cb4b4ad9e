"""Dependencies of the jobs domain."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends


async def celery_app() -> Celery:
    # Imported on first use: building the Celery app reads settings and the task modules.
    from steward.jobs import app

    return app


CeleryApp = Annotated[Celery, Depends(celery_app)]
