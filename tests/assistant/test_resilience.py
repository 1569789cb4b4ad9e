"""A misbehaving provider: retries before the first token (honouring Retry-After), timeouts,
cut and malformed streams, the circuit breaker and its fallback. No run is left running."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from steward.app import create_app
from steward.platform.db import async_url
from tests.assistant.conftest import (
    ServedFake,
    ask,
    assistant_settings,
    new_conversation,
    provider_settings,
)
from tests.conftest import app_client
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import DEFAULT_REPLY, Script

pytestmark = pytest.mark.usefixtures("clean_state")


async def _stream(
    client: httpx.AsyncClient, account: Any, conversation: str
) -> list[tuple[str, dict[str, Any]]]:
    events = []
    async with aconnect_sse(
        client, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
        json={"content": "go"}, headers={**account.headers, "Accept": "text/event-stream"},
    ) as source:  # fmt: skip
        async for sse in source.aiter_sse():
            events.append((sse.event, orjson.loads(sse.data)))
    return events


async def _statuses(engines: EngineSet) -> list[str]:
    engine = create_async_engine(async_url(engines.database_url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text("SELECT status FROM runs"))).scalars())
    finally:
        await engine.dispose()


async def test_429_is_retried_after_its_retry_after(
    client: httpx.AsyncClient, fake: ServedFake, engines: EngineSet
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(status=429, retry_after=0.4), Script(status=503))
    started = time.monotonic()
    response = await ask(client, alice, conversation, "hi")
    assert time.monotonic() - started >= 0.4
    assert response.json()["run"]["status"] == "succeeded"
    assert response.json()["run"]["message"]["content"] == DEFAULT_REPLY
    assert len(fake.requests) == 3
    assert await _statuses(engines) == ["succeeded"]


async def test_persistent_500s_end_in_an_error_event_and_a_failed_run(
    client: httpx.AsyncClient, fake: ServedFake, engines: EngineSet
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(*[Script(status=500) for _ in range(3)])
    events = await _stream(client, alice, conversation)
    assert [name for name, _ in events] == ["run", "error", "usage", "done"]
    error = events[1][1]
    assert error["status"] == 502 and error["type"].endswith("/provider-unavailable")
    assert error["cause"] == "status" and "HTTP 500" in error["detail"]
    assert events[-1][1]["status"] == "failed"
    assert len(fake.requests) == 3  # one call and max_retries=2 retries
    assert await _statuses(engines) == ["failed"]


async def test_a_rejected_request_is_not_retried(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(status=400))
    response = await ask(client, alice, conversation, "hi")
    problem = response.json()
    assert response.status_code == 502, problem
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/provider-rejected") and problem["cause"] == "status"
    run = (await client.get(problem["run"], headers=alice.headers)).json()
    assert run["id"] == problem["run_id"] and run["status"] == "failed"
    assert len(fake.requests) == 1


async def test_stall_before_the_first_token_times_out_and_is_retried(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(stall_before_s=3))
    started = time.monotonic()
    body = (await ask(client, alice, conversation, "hi")).json()
    assert body["run"]["status"] == "succeeded"
    assert 1.0 <= time.monotonic() - started < 3
    assert len(fake.requests) == 2


def _failed_after(events: list[tuple[str, Any]], text: str) -> dict[str, Any]:
    """The stream's error, after it sent exactly `text` (in as many token events as the
    provider's pieces arrived in: pieces read together are merged)."""
    names = [name for name, _ in events]
    assert names[0] == "run" and names[-3:] == ["error", "usage", "done"], names
    assert set(names[1:-3]) == {"token"}, names
    assert "".join(data["delta"] for name, data in events if name == "token") == text
    error: dict[str, Any] = events[-3][1]
    return error


async def test_stall_mid_stream_is_an_error_not_a_retry(
    client: httpx.AsyncClient, fake: ServedFake, engines: EngineSet
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="one two three four", stall_after=2))
    events = await _stream(client, alice, conversation)
    assert _failed_after(events, "one two")["type"].endswith("/stream-stalled")
    assert len(fake.requests) == 1
    assert await _statuses(engines) == ["failed"]


async def test_cut_connection_mid_stream_fails_the_run(
    client: httpx.AsyncClient, fake: ServedFake, engines: EngineSet
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="one two three four", cut_after=2))
    events = await _stream(client, alice, conversation)
    _failed_after(events, "one two")
    assert events[-1][1]["status"] == "failed"
    assert len(fake.requests) == 1
    assert await _statuses(engines) == ["failed"]


async def test_malformed_chunks_fail_the_run_with_an_error_event(
    client: httpx.AsyncClient, fake: ServedFake, engines: EngineSet
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(malformed=True))
    events = await _stream(client, alice, conversation)
    assert [name for name, _ in events] == ["run", "error", "usage", "done"]
    assert events[1][1]["status"] == 502
    assert await _statuses(engines) == ["failed"]


async def test_breaker_opens_then_fallback_answers_then_a_probe_closes_it(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(
        engines, fake.url, assistant_breaker_failures=2, assistant_breaker_reset_s=0.5,
        assistant_fallback_provider="offline", assistant_offline_delay_s=0,
        provider={"max_retries": 0},
    )  # fmt: skip
    app = create_app(settings)
    async with app_client(app) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        fake.script(Script(status=500), Script(status=500))
        for _ in range(2):
            assert (await ask(client, alice, conversation, "hi")).status_code == 502
        assert len(fake.requests) == 2

        opened = (await ask(client, alice, conversation, "hi")).json()
        assert len(fake.requests) == 2  # the open circuit kept the call away from it
        assert opened["run"]["status"] == "succeeded"
        assert opened["run"]["message"]["content"].startswith("[offline]")

        await asyncio.sleep(0.6)  # half-open: one probe goes through and closes the circuit
        probe = (await ask(client, alice, conversation, "hi")).json()
        assert probe["run"]["message"]["content"] == DEFAULT_REPLY
        assert len(fake.requests) == 3
        metrics = (await client.get("/metrics")).text
    assert 'steward_provider_calls_total{outcome="open",provider="fake"} 1.0' in metrics
    assert 'steward_provider_fallbacks_total{provider="offline"} 1.0' in metrics


async def test_without_a_fallback_an_open_circuit_is_a_clear_error(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(
        engines, fake.url, assistant_breaker_failures=1, assistant_breaker_reset_s=60,
        provider={"max_retries": 0},
    )  # fmt: skip
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        fake.script(Script(status=502))
        await ask(client, alice, conversation, "hi")
        response = await ask(client, alice, conversation, "hi")
    assert response.status_code == 503
    assert response.json()["type"].endswith("/circuit-open")
    assert len(fake.requests) == 1


async def test_a_fallback_gets_only_the_vendor_parameters_it_allows(
    engines: EngineSet, fake: ServedFake
) -> None:
    primary = provider_settings(fake.url, max_retries=0, extra_body_allowed=["enable_thinking"])
    backup = provider_settings(fake.url, model="backup-model", extra_body_allowed=["thinking"])
    settings = assistant_settings(
        engines, fake.url, assistant_breaker_failures=1, assistant_breaker_reset_s=60,
        assistant_providers={"primary": primary, "backup": backup},
        assistant_fallback_provider="backup",
    )  # fmt: skip
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        fake.script(Script(status=500))
        assert (await ask(client, alice, conversation, "hi")).status_code == 502  # opens it
        vendor = {"enable_thinking": True}
        answered = await ask(client, alice, conversation, "hi", provider="primary",
                             extra_body=vendor)  # fmt: skip
        assert answered.status_code == 200, answered.text
        sent = fake.requests[-1]
        assert sent["model"] == "backup-model"
        assert "enable_thinking" not in sent  # DashScope's switch is not Ark's
