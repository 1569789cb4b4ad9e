"""The jobs domain's own tasks: a ping through the whole pipeline, and the outbox sweeper.
Each domain keeps its tasks next to it (`<domain>/tasks.py`); every task takes ids or plain
values, opens its own transaction, and is safe to run twice (retries and sweeps happen)."""

from __future__ import annotations

import structlog
from celery import shared_task

from steward.jobs import runtime
from steward.jobs.base import StewardTask
from steward.jobs.outbox import Outbox
from steward.platform.resources import Resources

log = structlog.get_logger(__name__)


@shared_task(name="steward.ping", base=StewardTask)
def ping() -> str:
    """A no-op round trip through broker, worker and result backend."""
    return "pong"


@shared_task(name="steward.jobs.purge", base=StewardTask)
def purge_jobs() -> int:
    """Beat, daily (`SCHEDULE_CLEANUP`): forget sent jobs older than `JOB_RETENTION_S`."""

    async def purge(resources: Resources) -> int:
        retention = resources.settings.job_retention_s
        return await resources.get(Outbox).purge(older_than_s=retention)

    removed = runtime.run(purge)
    log.info("jobs.purged", removed=removed)
    return removed


@shared_task(name="steward.jobs.sweep_outbox", base=StewardTask)
def sweep_outbox() -> int:
    """Beat: send the jobs whose send after their commit never happened (jobs/outbox.py)."""

    async def sweep(resources: Resources) -> int:
        return await resources.get(Outbox).sweep(
            older_than_s=resources.settings.outbox_sweep_after_s
        )

    return runtime.run(sweep)
