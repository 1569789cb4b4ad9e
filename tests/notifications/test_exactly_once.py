"""Two beat processes and a worker whose pool is killed mid-run: every due reminder still
becomes exactly one notification."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from steward.platform.db import async_url
from tests.engines import EngineSet
from tests.factories import make_account
from tests.workers import running_worker, start_beat, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_state")]
EVERY_SECOND = {"SCHEDULE_REMINDERS": "every 1s"}


async def _counts(engines: EngineSet) -> tuple[int, int]:
    """(notifications, todos that have more than one)."""
    engine = create_async_engine(async_url(engines.database_url))
    try:
        async with engine.connect() as conn:
            total = (await conn.execute(text("SELECT count(*) FROM notifications"))).scalar_one()
            doubled = (
                await conn.execute(text(
                    "SELECT count(*) FROM (SELECT todo_id FROM notifications GROUP BY todo_id "
                    "HAVING count(*) > 1) AS d"
                ))
            ).scalar_one()  # fmt: skip
    finally:
        await engine.dispose()
    return int(total), int(doubled)


async def test_two_beats_and_a_killed_worker_still_remind_once(
    client: httpx.AsyncClient, engines: EngineSet
) -> None:
    due = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    users = [await make_account(client) for _ in range(3)]

    async def add_todos(n: int) -> None:
        for user in users:
            for i in range(n):
                body = {"title": f"t{i}", "remind_at": due}
                created = await client.post("/api/v1/todos", json=body, headers=user.headers)
                assert created.status_code == 201

    await add_todos(10)
    beats = [start_beat(engines, extra_env=EVERY_SECOND) for _ in range(2)]
    try:
        with running_worker(engines, extra_env=EVERY_SECOND) as (_, worker):
            deadline = time.monotonic() + 30
            while (await _counts(engines))[0] == 0:
                assert time.monotonic() < deadline, "no reminder was ever sent"
                await asyncio.sleep(0.1)
            await add_todos(10)  # more due reminders while the pool dies
            pgrep = await asyncio.create_subprocess_exec(
                "pgrep", "-P", str(worker.pid), stdout=asyncio.subprocess.PIPE
            )
            for child in (await pgrep.communicate())[0].decode().split():
                os.kill(int(child), signal.SIGKILL)
            await add_todos(5)
            deadline = time.monotonic() + 40
            while (await _counts(engines))[0] < 75:
                assert time.monotonic() < deadline, f"only {(await _counts(engines))[0]} of 75"
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # several more sweeps from the live beat
            assert await _counts(engines) == (75, 0)
            assert all(beat.poll() is None for beat in beats)  # both alive, one scheduling
            redis = Redis.from_url(engines.redis_url)
            assert await redis.exists("steward:redbeat::lock")
            await redis.aclose()
    finally:
        for beat in beats:
            stop_worker(beat)
