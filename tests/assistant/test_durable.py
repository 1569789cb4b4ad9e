"""Durable runs: events resumable from any API process with Last-Event-ID, several readers at
once, 410 once expired; background runs executed by a real Celery worker, including one
killed mid-run; runs orphaned by a dead process are reaped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from celery import Celery
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from steward.assistant import repository
from steward.assistant.models import Run
from steward.platform.resources import Resources
from tests.assistant.conftest import (
    ServedFake,
    assistant_settings,
    new_conversation,
    provider_settings,
)
from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.fakes.openai_server import Script
from tests.live import live_server
from tests.workers import LOG as WORKER_LOG
from tests.workers import running_worker

pytestmark = pytest.mark.usefixtures("clean_state")
Event = tuple[str, str, str]  # (id, event, data)


async def read_events(
    http: httpx.AsyncClient, account: Account, run_id: str, *, after: str | None = None,
    stop_after: int | None = None, use_query: bool = False,
) -> list[Event]:  # fmt: skip
    headers = dict(account.headers)
    params = {}
    if after is not None:
        if use_query:
            params["last_event_id"] = after
        else:
            headers["Last-Event-ID"] = after
    events: list[Event] = []
    async with aconnect_sse(
        http, "GET", f"/api/v1/assistant/runs/{run_id}/events", headers=headers, params=params
    ) as source:
        async for sse in source.aiter_sse():
            events.append((sse.id, sse.event, sse.data))
            if stop_after is not None and len(events) == stop_after:
                break
    return events


async def _start_streaming(
    http: httpx.AsyncClient, account: Account, conversation: str
) -> tuple[str, asyncio.Task[list[Event]]]:
    """POST a message over SSE and keep reading it in the background; returns the run id
    and the task that ends with the events the POST received."""
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def consume() -> list[Event]:
        events: list[Event] = []
        async with aconnect_sse(
            http, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
            json={"content": "tell me a long story"},
            headers={**account.headers, "Accept": "text/event-stream"},
        ) as source:  # fmt: skip
            async for sse in source.aiter_sse():
                events.append((sse.id, sse.event, sse.data))
                if sse.event == "run" and not started.done():
                    started.set_result(json.loads(sse.data)["run_id"])
        return events

    task = asyncio.create_task(consume())
    return await asyncio.wait_for(started, 10), task


@pytest.mark.slow
async def test_resuming_on_another_instance_loses_and_repeats_nothing(
    engines: EngineSet, fake: ServedFake
) -> None:
    fake.script(Script(text=" ".join(f"t{i}" for i in range(60)), delay_s=0.01))
    settings = assistant_settings(engines, fake.url)
    async with (
        live_server(settings) as a,
        live_server(settings) as b,
        httpx.AsyncClient(base_url=a, timeout=20) as on_a,
        httpx.AsyncClient(base_url=b, timeout=20) as on_b,
    ):
        alice = await make_account(on_a)
        conversation = await new_conversation(on_a, alice)
        run_id, producer = await _start_streaming(on_a, alice, conversation)

        # Several readers at once: one uninterrupted, one that drops and resumes elsewhere.
        whole_task = asyncio.create_task(read_events(on_a, alice, run_id))
        first_half = await read_events(on_a, alice, run_id, stop_after=20)
        second_half = await read_events(on_b, alice, run_id, after=first_half[-1][0])
        whole = await whole_task
        posted = await producer

        assert first_half + second_half == whole
        # The POST's own reader is handed each event before it is stored, with the id the
        # stream then stores it under.
        assert posted == whole
        assert whole[0][1] == "run" and whole[-1][1] == "done"
        assert json.loads(whole[-1][2])["status"] == "succeeded"
        assert "".join(json.loads(d)["delta"] for _, e, d in whole if e == "token").split() == [
            f"t{i}" for i in range(60)
        ]

        # After the end: the rest, then the stream closes; the query form works too.
        tail = await read_events(on_b, alice, run_id, after=whole[-3][0], use_query=True)
        assert tail == whole[-2:]
        # Resuming after the last event: nothing more, and the stream closes at once.
        assert await asyncio.wait_for(read_events(on_b, alice, run_id, after=whole[-1][0]), 5) == []

        bad = await on_b.get(f"/api/v1/assistant/runs/{run_id}/events",
                             headers={**alice.headers, "Last-Event-ID": "not-an-id"})  # fmt: skip
        assert bad.status_code == 422

        redis = Redis.from_url(engines.redis_url)
        ttl = await redis.ttl(f"run:{run_id}")
        assert 0 < ttl <= settings.run_stream_ttl_s
        await redis.delete(f"run:{run_id}")  # as if expired
        await redis.aclose()
        gone = await on_b.get(f"/api/v1/assistant/runs/{run_id}/events", headers=alice.headers)
        assert gone.status_code == 410
        assert gone.json()["run"] == f"/api/v1/assistant/runs/{run_id}"
        final = (await on_b.get(gone.json()["run"], headers=alice.headers)).json()
        assert final["message"]["content"].split() == [f"t{i}" for i in range(60)]


@pytest.mark.slow
async def test_many_readers_share_one_redis_connection(
    engines: EngineSet, fake: ServedFake
) -> None:
    # Far more readers than pooled Redis connections: readers must not each hold one.
    fake.script(Script(text=" ".join(f"t{i}" for i in range(40)), delay_s=0.05))
    settings = assistant_settings(engines, fake.url, redis_max_connections=6)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        alice = await make_account(http)
        conversation = await new_conversation(http, alice)
        run_id, producer = await _start_streaming(http, alice, conversation)
        readers = await asyncio.gather(*(read_events(http, alice, run_id) for _ in range(60)))
        await producer
    assert all(r == readers[0] for r in readers)
    assert [e for _, e, _ in readers[0]][-2:] == ["usage", "done"]
    assert sum(e == "token" for _, e, _ in readers[0]) == 40


@pytest.fixture(scope="module")
def assistant_worker(
    engines: EngineSet, fake_server: ServedFake
) -> Iterator[tuple[Celery, subprocess.Popen[bytes]]]:
    providers = {"fake": provider_settings(fake_server.url)}
    env = {"ASSISTANT_PROVIDERS": json.dumps(providers), "ASSISTANT_RETRY_BASE_S": "0.01"}
    with running_worker(engines, extra_env=env) as running:
        yield running


async def _wait_for(http: httpx.AsyncClient, account: Account, run_id: str,
                    done: set[str], within_s: float = 30) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + within_s
    while True:
        run: dict[str, Any] = (
            await http.get(f"/api/v1/assistant/runs/{run_id}", headers=account.headers)
        ).json()
        if run["status"] in done or time.monotonic() > deadline:
            return run
        await asyncio.sleep(0.1)


async def _ask_in_background(
    http: httpx.AsyncClient, content: str, headers: dict[str, str] | None = None
) -> tuple[Account, httpx.Response]:
    """A new user's message with `background: true` (its job goes to the settings' broker)."""
    alice = await make_account(http)
    conversation = await new_conversation(http, alice)
    accepted = await http.post(
        f"/api/v1/assistant/conversations/{conversation}/messages",
        json={"content": content, "background": True}, headers={**alice.headers, **(headers or {})},
    )  # fmt: skip
    return alice, accepted


@pytest.mark.slow
async def test_background_run_is_executed_by_a_worker(
    engines: EngineSet, fake: ServedFake, assistant_worker: tuple[Celery, Any]
) -> None:
    assert assistant_worker  # the worker that runs the job
    fake.script(Script(text="answered in the background", usage=(9, 4)))
    settings = assistant_settings(engines, fake.url, tracing=True)
    trace_id = f"{uuid.uuid4().int:032x}"
    request_id = f"bg-{uuid.uuid4().hex[:12]}"
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        alice, accepted = await _ask_in_background(http, "later please", {
            "X-Request-ID": request_id, "traceparent": f"00-{trace_id}-{'1' * 16}-01"})  # fmt: skip
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["id"]
        assert accepted.headers["location"] == f"/api/v1/assistant/runs/{run_id}"
        events = await asyncio.wait_for(read_events(http, alice, run_id), 30)
        assert [e for _, e, _ in events][-2:] == ["usage", "done"]
        run = await _wait_for(http, alice, run_id, {"succeeded"})
        assert run["status"] == "succeeded" and run["background"] is True
        assert run["message"]["content"] == "answered in the background"
        assert run["usage"]["total_tokens"] == 13
        job = await http.get(f"/api/v1/jobs/{accepted.json()['job_id']}", headers=alice.headers)
        assert job.json()["name"] == "steward.assistant.run", job.text
        assert job.json()["state"] == "SUCCESS"
    # The worker's log lines for this task carry the API call's request id and trace.
    lines = [json.loads(line) for line in WORKER_LOG.read_text().splitlines()
             if '"assistant.background_run"' in line and run_id in line]  # fmt: skip
    assert lines, "the task logged nothing"
    assert lines[-1]["request_id"] == request_id
    assert lines[-1]["trace_id"] == trace_id
    assert lines[-1]["task"] == "steward.assistant.run"


@pytest.mark.slow
async def test_a_worker_killed_mid_run_leaves_the_run_failed_not_running(
    engines: EngineSet, fake: ServedFake, assistant_worker: tuple[Celery, subprocess.Popen[bytes]]
) -> None:
    _, process = assistant_worker
    fake.script(Script(text=" ".join(f"w{i}" for i in range(400)), delay_s=0.02))
    async with (
        live_server(assistant_settings(engines, fake.url)) as base,
        httpx.AsyncClient(base_url=base, timeout=20) as http,
    ):
        alice, accepted = await _ask_in_background(http, "long")
        run_id = accepted.json()["id"]
        seen = await asyncio.wait_for(read_events(http, alice, run_id, stop_after=10), 30)
        assert seen[-1][1] == "token"
        pgrep = await asyncio.create_subprocess_exec(
            "pgrep", "-P", str(process.pid), stdout=asyncio.subprocess.PIPE
        )
        children = (await pgrep.communicate())[0].decode().split()
        assert children
        for child in children:  # the pool process running the task dies without a word
            os.kill(int(child), signal.SIGKILL)
        run = await _wait_for(http, alice, run_id, {"failed", "succeeded", "cancelled"})
        assert run["status"] == "failed"
        assert run["error"]["type"].endswith("/run-interrupted")
        events = await asyncio.wait_for(read_events(http, alice, run_id), 10)
        assert events[-1][1] == "done"
        assert json.loads(events[-1][2])["status"] == "failed"


@pytest.mark.slow
async def test_orphaned_runs_are_reaped(engines: EngineSet, fake: ServedFake) -> None:
    settings = assistant_settings(engines, fake.url)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        alice = await make_account(http)
        conversation = await new_conversation(http, alice)
        resources: Resources = base.app.state.resources
        async with resources.transaction() as session:
            common = {"conversation_id": conversation, "owner_id": alice.id, "provider": "fake",
                      "model": "m", "prompt_name": "assistant", "prompt_version": 0}  # fmt: skip
            old = Run(**common, status="running", created_at=datetime.now(UTC) - timedelta(hours=1))
            fresh = Run(**common, status="queued")
            session.add_all([old, fresh])
        async with resources.transaction() as session:
            reaped = await repository.reap_runs(
                session, older_than=datetime.now(UTC) - timedelta(minutes=30)
            )
        assert reaped == 1
        statuses = {
            run_id: (
                await http.get(f"/api/v1/assistant/runs/{run_id}", headers=alice.headers)
            ).json()["status"]
            for run_id in (old.id, fresh.id)
        }
        assert statuses == {old.id: "failed", fresh.id: "queued"}


@pytest.mark.slow
async def test_cancelling_a_queued_background_run_closes_it(
    engines: EngineSet, fake: ServedFake
) -> None:
    # A broker no worker listens on: the run stays queued until cancelled.
    settings = assistant_settings(engines, fake.url).model_copy(
        update={"celery_broker_url": engines.redis_spare(2)}
    )
    async with (
        live_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=20) as http,
    ):
        alice, accepted = await _ask_in_background(http, "never picked up")
        run_id = accepted.json()["id"]
        assert accepted.json()["status"] == "queued"
        cancelled = await http.post(
            f"/api/v1/assistant/runs/{run_id}/cancel", headers=alice.headers
        )
        assert cancelled.status_code == 202
        assert cancelled.json()["status"] == "cancelled"
        events = await asyncio.wait_for(read_events(http, alice, run_id), 10)
        assert [(e, json.loads(d)["status"]) for _, e, d in events] == [("done", "cancelled")]
    assert fake.requests == []
