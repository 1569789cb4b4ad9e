"""Many processes, one service: two separate `steward api` processes on one PostgreSQL and
one Redis behave as one service. A rate limit is shared exactly; a run streamed by one is
resumed and cancelled through the other; a realtime event published by one reaches a client
of the other; a change made through one is seen at once through the other (near cache)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.live import ROOT, ApiProcess, api_process

pytestmark = pytest.mark.slow
LIMIT = 25


@pytest.fixture(scope="module")
def pair(engines: EngineSet) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    env = {
        "DATABASE_URL": engines.database_url, "REDIS_URL": engines.redis_url,
        "CELERY_BROKER_URL": engines.redis_spare(1), "LOG_FORMAT": "json",
        "ASSISTANT_OFFLINE_DELAY_S": "0.05", "RATE_LIMIT_AUTHENTICATED": f"{LIMIT}/minute",
        "RATE_LIMIT_LOGIN": "1000/minute", "RATE_LIMIT_REGISTER": "1000/minute",
        "RATE_LIMIT_ASSISTANT": "1000/minute",
        "PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "1024",
    }  # fmt: skip
    with ExitStack() as stack:
        first = stack.enter_context(api_process(env, ROOT / ".steward-test" / "api-a.log"))
        second = stack.enter_context(api_process(env, ROOT / ".steward-test" / "api-b.log"))
        yield first, second


@pytest.fixture
async def clients(
    pair: tuple[ApiProcess, ApiProcess], clean_state: None
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    first, second = pair
    async with (
        httpx.AsyncClient(base_url=first.base, timeout=30) as a,
        httpx.AsyncClient(base_url=second.base, timeout=30) as b,
    ):
        yield a, b


async def test_a_rate_limit_is_one_budget_across_processes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    account = await make_account(a)
    statuses = [
        (await (a if i % 2 else b).get("/api/v1/todos", headers=account.headers)).status_code
        for i in range(LIMIT + 6)
    ]
    # Signing up made no authenticated call: exactly LIMIT pass, whichever process served.
    assert statuses.count(200) == LIMIT, statuses
    assert set(statuses[LIMIT:]) == {429}, statuses


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str, dict]]:
    event_id, kind = None, "message"
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event_id, kind, json.loads(line.removeprefix("data: "))
            event_id, kind = None, "message"


async def test_a_run_streamed_by_one_is_resumed_and_cancelled_through_the_other(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    account = await make_account(a)
    conversation = (await a.post("/api/v1/assistant/conversations", json={},
                                 headers=account.headers)).json()["id"]  # fmt: skip
    words = " ".join(f"w{i}" for i in range(300))  # ~15 s of tokens at 50 ms each
    seen_on_a: list[tuple[str | None, str, dict]] = []
    async with a.stream(
        "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
        json={"content": words}, headers={**account.headers, "accept": "text/event-stream"},
    ) as streamed:  # fmt: skip
        reader = _events(streamed)
        async for event in reader:
            seen_on_a.append(event)
            if sum(kind == "token" for _, kind, _ in seen_on_a) == 5:
                break
        run_id = seen_on_a[0][2]["run_id"]
        last_id = next(i for i, kind, _ in reversed(seen_on_a) if i and kind == "token")
        # B picks up after A's last event: the next token, nothing repeated.
        resumed: list[tuple[str | None, str, dict]] = []
        async with b.stream(
            "GET", f"/api/v1/assistant/runs/{run_id}/events",
            headers={**account.headers, "last-event-id": last_id},
        ) as followed:  # fmt: skip
            async for event in _events(followed):
                resumed.append(event)
                if sum(kind == "token" for _, kind, _ in resumed) == 3:
                    cancel = await b.post(f"/api/v1/assistant/runs/{run_id}/cancel",
                                          headers=account.headers)  # fmt: skip
                    assert cancel.status_code == 202, cancel.text
                if event[1] == "done":
                    break
        rest_on_a = [event async for event in reader]
    tokens_a = [data["delta"] for _, kind, data in seen_on_a if kind == "token"]
    tokens_b = [data["delta"] for _, kind, data in resumed if kind == "token"]
    assert tokens_a == ["[offline]", " No", " language", " model", " is"]
    assert tokens_b[:2] == [" configured,", " so"], tokens_b[:3]  # the very next tokens
    assert resumed[-1][2]["status"] == "cancelled"
    assert rest_on_a[-1][1] == "done" and rest_on_a[-1][2]["status"] == "cancelled"
    run = await a.get(f"/api/v1/assistant/runs/{run_id}", headers=account.headers)
    assert run.json()["status"] == "cancelled"


async def test_an_event_published_by_one_reaches_a_client_of_the_other(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    account = await make_account(a)
    received: list[tuple[str, dict]] = []
    async with b.stream("GET", "/api/v1/realtime/events", headers=account.headers) as live:
        events = _events(live)
        async for _, kind, _ in events:
            if kind == "ready":
                break
        created = await a.post("/api/v1/todos", json={"title": "across"}, headers=account.headers)
        assert created.status_code == 201
        async with asyncio.timeout(10):
            async for _, kind, data in events:
                received.append((kind, data))
                if kind == "todo.created":
                    break
    assert received[-1][1]["todo"]["id"] == created.json()["id"]


async def test_a_change_through_one_is_seen_at_once_through_the_other(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    a, b = clients
    account: Account = await make_account(a)
    for client in (a, b):  # both have the profile in their near cache now
        assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 200
    changed = await a.patch("/api/v1/users/me", json={"display_name": "Changed on A"},
                            headers=account.headers)  # fmt: skip
    assert changed.status_code == 200, changed.text
    seen = await b.get("/api/v1/users/me", headers=account.headers)
    assert seen.json()["display_name"] == "Changed on A"


async def test_a_socket_of_one_gets_the_event_as_published_uncompressed(
    pair: tuple[ApiProcess, ApiProcess], clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    """WebSocket clients get each event as it was published (with its `event_id`), and no
    permessage-deflate is negotiated even when the client offers it (serving.SERVER_OPTIONS:
    events are small; a compressor per socket is not)."""
    from websockets.asyncio.client import connect

    a, _ = clients
    account = await make_account(a)
    url = pair[1].base.replace("http://", "ws://") + "/api/v1/realtime"
    async with connect(f"{url}?access_token={account.access_token}") as ws:  # offers deflate
        assert ws.protocol.extensions == []
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
        created = await a.post("/api/v1/todos", json={"title": "ws"}, headers=account.headers)
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert event["type"] == "todo.created" and event["todo"]["id"] == created.json()["id"]
    assert isinstance(event["event_id"], str) and "-" in event["event_id"]
