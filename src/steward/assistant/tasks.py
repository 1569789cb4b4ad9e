"""Celery tasks of the assistant: background runs, and reaping runs whose process died."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from celery import shared_task

from steward.assistant import repository, runs
from steward.assistant.plan import Plan
from steward.jobs import runtime
from steward.jobs.base import StewardTask
from steward.platform.resources import Resources

log = structlog.get_logger(__name__)

# Longer than any run may take (the providers' total timeouts are well under this).
REAP_AFTER = timedelta(minutes=30)


@shared_task(name=runs.RUN_TASK, base=StewardTask, max_retries=0)
def run_in_background(plan: dict[str, Any]) -> str | None:
    """Execute a run started with `"background": true`; its events go to the run's stream.
    A redelivery after the worker died retries it if nothing was streamed yet, else closes
    it as failed (see `repository.claim_run`)."""
    parsed = Plan.from_json(plan)
    log.info("assistant.background_run", run_id=str(parsed.run_id))

    async def work(resources: Resources) -> str | None:
        status = await runs.execute_queued(resources, parsed)
        return status.value if status is not None else None

    return runtime.run(work)


@shared_task(name="steward.assistant.reap", base=StewardTask)
def reap_runs() -> int:
    """Beat: runs still queued or running long after any run could take are marked failed."""

    async def reap(resources: Resources) -> int:
        async with resources.transaction() as session:
            return await repository.reap_runs(session, older_than=datetime.now(UTC) - REAP_AFTER)

    reaped = runtime.run(reap)
    if reaped:
        log.warning("assistant.runs_reaped", runs=reaped)
    return reaped
