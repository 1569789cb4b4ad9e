"""The job outbox: a job is recorded in the transaction that asks for it and sent once that
commits (never on a rollback); a send that never happens (a broker that refused it, a
process killed between commit and send) is sent by the sweeper."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from redis import Redis
from sqlalchemy import select

from steward.jobs import service
from steward.jobs.models import Job
from steward.jobs.outbox import Outbox
from steward.platform.resources import Resources
from tests.conftest import LogCapture, make_settings
from tests.engines import ROOT, EngineSet
from tests.workers import running_worker


def _queued(engines: EngineSet, job_id: str) -> int:
    """How many messages for `job_id` wait in the suite broker's default queue."""
    broker = Redis.from_url(engines.redis_spare(1))
    try:
        return sum(
            orjson.loads(raw)["headers"]["id"] == job_id for raw in broker.lrange("default", 0, -1)
        )
    finally:
        broker.close()


async def _job(resources: Resources, job_id: str) -> Job | None:
    async with resources.transaction() as session:
        job: Job | None = await session.scalar(select(Job).where(Job.id == job_id))
        return job


@pytest.fixture
async def resources(app: FastAPI, engines: EngineSet) -> AsyncIterator[Resources]:
    """The suite's resources (its broker is where `_queued` looks), opened for one test."""
    opened = Resources.open(make_settings(engines))
    yield opened
    await opened.close()


async def _enqueue_then_fail(resources: Resources, job_id: str) -> None:
    async with resources.transaction() as session:
        await service.enqueue(session, task="steward.ping", job_id=job_id)
        raise LookupError("the request failed")


async def test_a_job_is_sent_after_commit_and_never_after_rollback(
    resources: Resources, engines: EngineSet
) -> None:
    async with resources.transaction() as session:
        sent = await service.enqueue(session, task="steward.ping")
        assert _queued(engines, sent) == 0  # not before the commit
    assert _queued(engines, sent) == 1
    job = await _job(resources, sent)
    assert job is not None and job.sent_at is not None
    dropped = f"rolled-back-{uuid.uuid4().hex[:6]}"
    with pytest.raises(LookupError):
        await _enqueue_then_fail(resources, dropped)
    assert _queued(engines, dropped) == 0
    assert await _job(resources, dropped) is None


async def test_a_send_the_broker_refused_is_swept_up_later(
    resources: Resources, engines: EngineSet, logs: LogCapture
) -> None:
    # A broker that is down when the transaction commits: the job stays recorded, unsent.
    down = Resources.open(make_settings(engines, celery_broker_url="redis://127.0.0.1:9/0"))
    try:
        down.get(Outbox).celery.conf.broker_transport_options = {"max_retries": 0}
        async with down.transaction() as session:
            job_id = await service.enqueue(session, task="steward.ping")
    finally:
        await down.close()
    assert [e["job_id"] for e in logs.events("jobs.send_failed")] == [job_id]
    job = await _job(resources, job_id)
    assert job is not None and job.sent_at is None
    assert _queued(engines, job_id) == 0
    assert await resources.get(Outbox).sweep(older_than_s=0) == 1
    assert _queued(engines, job_id) == 1
    job = await _job(resources, job_id)
    assert job is not None and job.sent_at is not None
    assert await resources.get(Outbox).sweep(older_than_s=0) == 0  # sent once


async def test_sent_jobs_are_purged_after_their_retention_and_unsent_ones_kept(
    resources: Resources,
) -> None:
    async with resources.transaction() as session:
        sent = await service.enqueue(session, task="steward.ping")
        unsent = Job(id=f"unsent-{uuid.uuid4().hex[:6]}", name="steward.ping")
        session.add(unsent)
    outbox = resources.get(Outbox)
    assert await outbox.purge(older_than_s=3600) == 0  # too young
    assert await outbox.purge(older_than_s=0) == 1
    assert await _job(resources, sent) is None
    assert await _job(resources, unsent.id) is not None  # never sent: kept for the sweeper


_DIE_AFTER_COMMIT = textwrap.dedent("""
    import asyncio, os, signal
    import steward.models  # every table, as the app and the worker load them
    from steward.jobs import outbox, service
    from steward.platform.resources import Resources
    from steward.settings import Settings

    async def die(self, jobs):  # the process is killed between its commit and its send
        os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        outbox.Outbox.dispatch = die
        resources = Resources.open(Settings())
        async with resources.transaction() as session:
            print(await service.enqueue(session, task="steward.ping"), flush=True)

    asyncio.run(main())
""")


@pytest.mark.slow
async def test_a_process_killed_between_commit_and_send_loses_no_job(
    resources: Resources, engines: EngineSet
) -> None:
    env: dict[str, Any] = {
        **os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": engines.database_url,
        "REDIS_URL": engines.redis_url, "CELERY_BROKER_URL": engines.redis_spare(1),
    }  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DIE_AFTER_COMMIT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    job_id = out.decode().strip()
    job = await _job(resources, job_id)
    assert job is not None and job.sent_at is None  # committed, never sent
    assert _queued(engines, job_id) == 0
    with running_worker(engines) as (celery, _):
        assert await resources.get(Outbox).sweep(older_than_s=0) == 1
        assert celery.AsyncResult(job_id).get(timeout=30) == "pong"
