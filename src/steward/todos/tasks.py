"""Celery tasks of the todos domain: the daily cleanup of Idempotency-Key responses."""

from __future__ import annotations

import structlog
from celery import shared_task

from steward.jobs import runtime
from steward.jobs.base import StewardTask
from steward.platform.resources import Resources
from steward.todos import service

log = structlog.get_logger(__name__)


@shared_task(name="steward.cleanup", base=StewardTask)
def cleanup() -> int:
    """Beat, daily: drop expired Idempotency-Key responses."""

    async def purge(resources: Resources) -> int:
        async with resources.transaction() as session:
            return await service.purge_idempotency_keys(session)

    removed = runtime.run(purge)
    log.info("cleanup.idempotency_keys", removed=removed)
    return removed
