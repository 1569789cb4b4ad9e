"""A real worker: transient failures retry and succeed, permanent ones are dead-lettered,
admins list and replay them, and job status is visible to its owner only."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from fastapi import FastAPI
from redis import Redis

from steward.jobs import service
from steward.jobs.base import backoff_s
from tests.engines import EngineSet
from tests.factories import make_account, make_admin
from tests.live import free_port
from tests.metrics import sample
from tests.waiting import wait_until
from tests.workers import running_worker

pytestmark = pytest.mark.slow


def test_backoff_is_exponential_with_jitter() -> None:
    samples = [backoff_s(3, base=1, cap=100) for _ in range(500)]
    assert max(samples) <= 8
    assert min(samples) >= 0
    assert len({round(s, 3) for s in samples}) > 100  # jittered, not one fixed delay
    assert max(backoff_s(20, base=1, cap=100) for _ in range(100)) <= 100


def test_transient_failures_retry_then_succeed(worker: Celery) -> None:
    key = uuid.uuid4().hex
    assert worker.send_task("tests.flaky", args=[key, 2]).get(timeout=30) == 3


async def test_exhausted_task_is_dead_lettered_and_replayable(
    worker: Celery, client: httpx.AsyncClient, app: FastAPI, engines: EngineSet
) -> None:
    key = uuid.uuid4().hex
    worker.send_task("tests.flaky", args=[key, 99])  # never recovers: 1 try + 3 retries
    worker.send_task("tests.broken_until_fixed", args=[key])  # permanent: no retry
    admin = await make_admin(client, app)

    async def letters() -> list[dict[str, Any]]:
        page = (await client.get("/api/v1/admin/dead-letters", headers=admin.headers)).json()
        return [item for item in page["items"] if item["task_args"][0] == key]

    async def both() -> list[dict[str, Any]]:
        found = await letters()
        return found if len(found) >= 2 else []

    found = await wait_until(both, within_s=40, every_s=0.2, what="two dead letters")
    by_task = {item["task_name"]: item for item in found}
    assert by_task["tests.flaky"]["attempts"] == 4
    assert "TransientError" in by_task["tests.flaky"]["exception"]
    assert by_task["tests.broken_until_fixed"]["attempts"] == 1
    assert "ValueError" in by_task["tests.broken_until_fixed"]["exception"]

    user = await make_account(client)
    assert (await client.get("/api/v1/admin/dead-letters", headers=user.headers)).status_code == 403

    Redis.from_url(engines.redis_url).set(f"test:fixed:{key}", "1")
    letter = by_task["tests.broken_until_fixed"]
    replayed = await client.post(
        f"/api/v1/admin/dead-letters/{letter['id']}/replay", headers=admin.headers
    )
    assert replayed.status_code == 202
    task_id = replayed.json()["replay_task_id"]
    assert worker.AsyncResult(task_id).get(timeout=30) == "fixed"
    gone = await client.delete(f"/api/v1/admin/dead-letters/{letter['id']}", headers=admin.headers)
    assert gone.status_code == 204
    assert [item["task_name"] for item in await letters()] == ["tests.flaky"]


async def test_job_status_is_for_its_owner_only(
    worker: Celery, client: httpx.AsyncClient, app: FastAPI
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    async with app.state.resources.transaction() as session:
        job_id = await service.enqueue(session, owner_id=uuid.UUID(alice.id), task="steward.ping")
    assert worker.AsyncResult(job_id).get(timeout=30) == "pong"  # sent once committed
    mine = await client.get(f"/api/v1/jobs/{job_id}", headers=alice.headers)
    assert mine.status_code == 200
    assert mine.json()["state"] == "SUCCESS"
    assert mine.json()["result"] == "pong"
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=bob.headers)).status_code == 404
    assert (await client.get("/api/v1/jobs/nope", headers=alice.headers)).status_code == 404


def test_the_worker_serves_its_task_retry_and_dead_letter_figures(
    engines: EngineSet, tmp_path: Path
) -> None:
    port = free_port()
    env = {"WORKER_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    key = uuid.uuid4().hex
    # A broker of its own: the module's worker (still running) must not take these tasks.
    broker = engines.redis_spare(2)
    with running_worker(engines, env, broker=broker) as (client, _):
        assert client.send_task("tests.flaky", args=[key, 1]).get(timeout=30) == 2
        client.send_task("tests.broken_until_fixed", args=[key])

        deadline = time.monotonic() + 30
        while True:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if sample(text, "steward_dead_letters_total", task="tests.broken_until_fixed"):
                break
            assert time.monotonic() < deadline, "no dead letter counted within 30 s"
            time.sleep(0.2)
    # The rejected message may not be acknowledged yet when the worker stops, which puts it
    # back: it must not reach the next test that borrows this broker.
    Redis.from_url(broker).flushdb()
    # Counted by the pool processes, summed by the main process's server.
    assert sample(text, "steward_tasks_total", task="tests.flaky", state="success") == 1
    assert sample(text, "steward_tasks_total", task="tests.flaky", state="retry") == 1
    assert sample(text, "steward_task_retries_total", task="tests.flaky") == 1
    assert sample(text, "steward_dead_letters_total", task="tests.broken_until_fixed") == 1
    assert sample(text, "steward_task_duration_seconds_count", task="tests.flaky") == 2
    assert sample(text, "steward_queue_depth", queue="default") is not None
