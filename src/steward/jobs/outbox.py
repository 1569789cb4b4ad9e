"""The job outbox: jobs are rows written in the transaction that asks for them, sent to the
broker once it commits, and swept up if that send never happened.

A process killed between its commit and its send, or a broker that refused the send, loses
nothing: `sweep()` (a beat task, every `SCHEDULE_OUTBOX`) sends every job still unsent
`OUTBOX_SWEEP_AFTER_S` after it was recorded. Tasks are idempotent, so the rare job sent
twice (a send that reached the broker but not its `sent_at`) is harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import anyio.to_thread
import structlog
from celery import Celery
from prometheus_client import Counter
from sqlalchemy import delete, select, update

from steward.jobs.models import Job
from steward.jobs.worker import create_celery
from steward.platform.resources import Resources, provide
from steward.platform.transactions import Dispatch, Dispatcher

log = structlog.get_logger(__name__)

SENT = Counter("steward_jobs_sent_total", "Jobs sent to the broker, by path.", ["path"])
SEND_FAILED = Counter("steward_jobs_send_failed_total", "Job sends the broker did not take.")
SWEEP_BATCH = 500


class Outbox:
    """Sends committed jobs (the platform's `Dispatcher`) through a Celery app configured
    from the resources' settings, built on first use."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._celery: Celery | None = None

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = create_celery(self._resources.settings)
        return self._celery

    async def dispatch(self, jobs: list[Dispatch]) -> None:
        """Send jobs whose transaction committed, then mark them sent; a failed send is
        logged and left for `sweep`."""
        sent = await self._send(jobs)
        if sent:
            SENT.labels("commit").inc(len(sent))
            await self._mark_sent(sent)

    async def sweep(self, *, older_than_s: float) -> int:
        """Send jobs recorded more than `older_than_s` ago and still unsent; returns how many.
        Rows are locked while they are sent, so concurrent sweepers skip each other's."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._resources.transaction() as session:
            rows = (
                await session.execute(
                    select(Job)
                    .where(Job.sent_at.is_(None), Job.created_at < cutoff)
                    .order_by(Job.created_at)
                    .limit(SWEEP_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).scalars().all()  # fmt: skip
            jobs = [Dispatch(job.id, job.name, job.args, job.kwargs) for job in rows]
            sent = set(await self._send(jobs))
            now = datetime.now(UTC)
            for job in rows:
                if job.id in sent:
                    job.sent_at = now
        if sent:
            SENT.labels("sweep").inc(len(sent))
            log.warning("jobs.swept", sent=len(sent), unsent=len(jobs) - len(sent))
        return len(sent)

    async def purge(self, *, older_than_s: float) -> int:
        """Forget sent jobs recorded more than `older_than_s` ago (their results expire from
        the result backend after a day anyway); unsent ones stay until they are sent."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        async with self._resources.transaction() as session:
            result = await session.execute(
                delete(Job)
                .where(Job.sent_at.is_not(None), Job.created_at < cutoff)
                .returning(Job.id)
            )
            return len(result.all())

    async def _send(self, jobs: list[Dispatch]) -> list[str]:
        celery = self.celery
        sent: list[str] = []
        for job in jobs:
            try:
                # kombu's publish is blocking I/O: keep it off the event loop.
                send = partial(celery.send_task, job.task, args=job.args, kwargs=job.kwargs,
                               task_id=job.job_id)  # fmt: skip
                await anyio.to_thread.run_sync(send)
            except Exception as exc:  # noqa: BLE001 - the job is recorded; the sweeper sends it
                SEND_FAILED.inc()
                log.warning("jobs.send_failed", task=job.task, job_id=job.job_id,
                            error=type(exc).__name__)  # fmt: skip
                continue
            sent.append(job.job_id)
        return sent

    async def _mark_sent(self, job_ids: list[str]) -> None:
        try:
            async with self._resources.transaction() as session:
                await session.execute(
                    update(Job).where(Job.id.in_(job_ids)).values(sent_at=datetime.now(UTC))
                )
        except Exception as exc:  # noqa: BLE001 - the jobs went out; at worst swept again
            log.warning("jobs.mark_sent_failed", jobs=len(job_ids), error=type(exc).__name__)


provide(Outbox, Outbox)
provide(Dispatcher, lambda resources: resources.get(Outbox))  # type: ignore[type-abstract]
