"""Live events: a todo written through one app instance reaches a WebSocket or SSE client
connected to another, with auth, heartbeats and slow-consumer handling."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from steward.notifications.hub import Hub, Published
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import live_server
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("clean_state")


def _ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/realtime"


async def _subscribers(redis: Redis, channel: str) -> int:
    counts = await redis.pubsub_numsub(channel)
    return int(counts[0][1]) if counts else 0


async def _next_of(ws: Any, kind: str, within_s: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]


async def _drain_until_closed(ws: Any) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 3)


@pytest.mark.slow
async def test_todo_on_one_instance_reaches_a_socket_on_another(engines: EngineSet) -> None:
    settings = make_settings(engines)
    async with (
        live_server(settings) as a,
        live_server(settings) as b,
        httpx.AsyncClient(base_url=a) as http,
    ):
        alice = await make_account(http)
        bob = await make_account(http)
        async with connect(f"{_ws(b)}?access_token={alice.access_token}") as ws:
            ready = await _next_of(ws, "ready")
            assert ready["user_id"] == alice.id
            channels = Redis.from_url(engines.redis_url)
            try:  # the hub of instance b has subscribed to alice's channel
                channel = f"user:{alice.id}"
                await wait_until(
                    lambda: _subscribers(channels, channel), what="the hub's subscription"
                )
            finally:
                await channels.aclose()
            started = time.monotonic()
            await http.post("/api/v1/todos", json={"title": "mine"}, headers=bob.headers)
            created = await http.post(
                "/api/v1/todos", json={"title": "live"}, headers=alice.headers
            )
            event = await _next_of(ws, "todo.created")
            assert time.monotonic() - started < 1.0
            assert event["todo"]["id"] == created.json()["id"]
            assert event["todo"]["title"] == "live"  # bob's todo never arrived first


async def test_a_socket_that_leaves_while_nothing_happens_is_released_at_once(
    engines: EngineSet,
) -> None:
    """Its server side waits for the next event (a heartbeat away); the client's going must
    end that wait, not the next event or heartbeat."""
    async with live_server(make_settings(engines, realtime_heartbeat_s=60)) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            alice = await make_account(http)
        channels = Redis.from_url(engines.redis_url)
        channel = f"user:{alice.id}"
        try:
            async with connect(f"{_ws(base)}?access_token={alice.access_token}") as ws:
                await _next_of(ws, "ready")
                await wait_until(lambda: _subscribers(channels, channel), what="the subscription")
            left = time.monotonic()
            await wait_until(lambda: _gone(channels, channel), what="the subscription's end")
            assert time.monotonic() - left < 5  # not the 60 s heartbeat
        finally:
            await channels.aclose()


async def _gone(redis: Redis, channel: str) -> bool:
    return await _subscribers(redis, channel) == 0


@pytest.mark.slow
async def test_socket_auth_and_scope_close_codes(engines: EngineSet) -> None:
    async with live_server(make_settings(engines)) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            alice = await make_account(http)
            writer = (
                await http.post(
                    "/api/v1/api-keys",
                    json={"name": "w", "scopes": ["todos:write"]},
                    headers=alice.headers,
                )
            ).json()
        for url, headers, first, code in (
            (_ws(base), {}, {"type": "hello"}, 4401),
            (_ws(base), {}, {"type": "authenticate", "access_token": "forged"}, 4401),
            (_ws(base), {}, {"type": "authenticate", "api_key": writer["secret"]}, 4403),
            (f"{_ws(base)}?access_token=forged", {}, None, 4401),
            (_ws(base), {"x-api-key": writer["secret"]}, None, 4403),
        ):
            async with connect(url, additional_headers=headers) as ws:
                if first is not None:
                    await ws.send(json.dumps(first))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == code
        async with connect(_ws(base), additional_headers=alice.headers) as ws:
            assert (await _next_of(ws, "ready"))["user_id"] == alice.id
        # Browsers, which cannot set headers, send the token as the first message.
        async with connect(_ws(base)) as ws:
            await ws.send(json.dumps({"type": "authenticate", "access_token": alice.access_token}))
            assert (await _next_of(ws, "ready"))["user_id"] == alice.id


@pytest.mark.slow
async def test_heartbeats_and_lifetime(engines: EngineSet) -> None:
    settings = make_settings(engines, realtime_heartbeat_s=0.2, realtime_max_lifetime_s=1.0)
    async with live_server(settings) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            alice = await make_account(http)
        async with connect(f"{_ws(base)}?access_token={alice.access_token}") as ws:
            await _next_of(ws, "ready")
            assert (await _next_of(ws, "ping", within_s=1))["type"] == "ping"
            with pytest.raises(ConnectionClosed) as closed:
                await _drain_until_closed(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4000


@pytest.mark.slow
async def test_sse_twin_streams_events_without_holding_a_db_connection(
    engines: EngineSet,
) -> None:
    settings = make_settings(engines, realtime_heartbeat_s=0.3)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice = await make_account(http)
        unauthenticated = await http.get("/api/v1/realtime/events")
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["content-type"] == "application/problem+json"
        async with aconnect_sse(
            http, "GET", "/api/v1/realtime/events", headers=alice.headers
        ) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert source.response.headers["cache-control"] == "no-cache"
            assert source.response.headers["x-accel-buffering"] == "no"
            events = source.aiter_sse()
            first = await anext(events)
            assert first.event == "ready"
            async with httpx.AsyncClient(base_url=base) as writer:
                await writer.post("/api/v1/todos", json={"title": "sse"}, headers=alice.headers)
            event = await asyncio.wait_for(anext(events), 5)
            assert event.event == "todo.created"
            assert event.json()["todo"]["title"] == "sse"
            metrics = (await httpx.AsyncClient(base_url=base).get("/metrics")).text
            assert 'steward_realtime_connections{transport="sse"} 1.0' in metrics
            # The stream released its database session before the first event.
            assert base.app.state.resources.engine.pool.checkedout() == 0


async def test_slow_consumer_is_cut_off_not_buffered(engines: EngineSet) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(engines.redis_url)
    hub = Hub(redis, max_queue=3)
    try:
        slow = await hub.subscribe("u1")
        fast = await hub.subscribe("u1")
        received: list[int] = []

        async def keep_up() -> None:
            while len(received) < 10:
                event = await fast.next(2)
                if event is None:
                    return
                received.append(event.event["n"])

        reader = asyncio.create_task(keep_up())
        await asyncio.sleep(0.2)
        for i in range(10):
            await redis.publish("user:u1", json.dumps({"type": "todo.updated", "n": i}))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(reader, 5)
        assert received == list(range(10))
        assert not fast.dropped
        assert slow.dropped
        assert slow.queue.qsize() == 3  # bounded: nothing beyond the queue was kept
        await slow.close()
        await fast.close()
    finally:
        await hub.close()
        await redis.aclose()


async def test_a_stopped_stream_stops_even_when_an_event_arrives_at_that_moment(
    engines: EngineSet,
) -> None:
    """A shutdown cancels the stream's task; an event arriving in the same instant must not
    swallow that cancellation (asyncio.wait_for does, on Python 3.11), or the stream goes on
    and its server waits for it until killed."""
    from redis.asyncio import Redis

    redis = Redis.from_url(engines.redis_url)
    hub = Hub(redis)
    try:
        subscription = await hub.subscribe("u-cancel")
        waiting = asyncio.create_task(subscription.next(30))
        await asyncio.sleep(0.05)  # waiting for an event
        subscription.queue.put_nowait(Published({"type": "todo.created"}, "{}"))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await subscription.close()
    finally:
        await redis.aclose()
