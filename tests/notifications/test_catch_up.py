"""Offline catch-up: every live event carries an id; a device that reconnects with the last
id it saw (SSE `Last-Event-ID`, WebSocket `?last_event_id=`) gets what it missed, in order,
then live events, with no gap and no duplicate; when what it missed is gone, a `resync`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from steward.platform.pubsub import log_key, user_channel
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.live import live_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_state")]
EVENTS = "/api/v1/realtime/events"


async def _todo(http: httpx.AsyncClient, account: Account, title: str) -> None:
    made = await http.post("/api/v1/todos", json={"title": title}, headers=account.headers)
    assert made.status_code == 201


async def _read(http: httpx.AsyncClient, account: Account, last: str | None, count: int,
                then: Any = None) -> list[tuple[str, str, dict[str, Any]]]:  # fmt: skip
    """`count` events after `ready` (calling `then()` once caught up to `count - 1`)."""
    headers = {**account.headers, **({"Last-Event-ID": last} if last else {})}
    seen: list[tuple[str, str, dict[str, Any]]] = []
    async with aconnect_sse(http, "GET", EVENTS, headers=headers) as source:
        events = source.aiter_sse()
        assert (await asyncio.wait_for(anext(events), 5)).event == "ready"
        while len(seen) < count:
            if then is not None and len(seen) == count - 1:
                await then()
                then = None
            event = await asyncio.wait_for(anext(events), 5)
            seen.append((event.event, event.id, event.json()))
    return seen


async def test_a_device_gets_what_it_missed_then_live_events(engines: EngineSet) -> None:
    settings = make_settings(engines, realtime_heartbeat_s=0.5)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice = await make_account(http)
        [(kind, first_id, first)] = await _read(http, alice, None, 1,
                                                then=lambda: _todo(http, alice, "A"))  # fmt: skip
        assert (kind, first["todo"]["title"], first["event_id"]) == ("todo.created", "A", first_id)
        for title in ("B", "C"):  # while the device is away
            await _todo(http, alice, title)
        seen = await _read(http, alice, first_id, 3, then=lambda: _todo(http, alice, "D"))
        assert [data["todo"]["title"] for _, _, data in seen] == ["B", "C", "D"]
        ids = [event_id for _, event_id, _ in seen]
        assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
        assert len(set(ids)) == 3 and first_id not in ids


async def test_a_device_whose_missed_events_are_gone_is_told_to_resync(
    engines: EngineSet,
) -> None:
    settings = make_settings(engines, realtime_heartbeat_s=0.5)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice = await make_account(http)
        await _todo(http, alice, "A")
        redis = Redis.from_url(engines.redis_url)
        await redis.delete(log_key(user_channel(alice.id)))  # expired while it was away
        await redis.aclose()
        [(kind, _, data)] = await _read(http, alice, "1700000000000-0", 1)
        assert kind == "resync" and "reload" in data["detail"]
        [(kind, _, _)] = await _read(http, alice, "not-an-id", 1)
        assert kind == "resync"


async def test_a_websocket_catches_up_with_last_event_id(engines: EngineSet) -> None:
    settings = make_settings(engines, realtime_heartbeat_s=0.5)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        alice = await make_account(http)
        ws_url = base.replace("http://", "ws://") + "/api/v1/realtime"
        async with connect(f"{ws_url}?access_token={alice.access_token}") as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await _todo(http, alice, "A")
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await _todo(http, alice, "B")
        url = f"{ws_url}?access_token={alice.access_token}&last_event_id={first['event_id']}"
        async with connect(url) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            missed = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (missed["type"], missed["todo"]["title"]) == ("todo.created", "B")
            await _todo(http, alice, "C")
            live = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert live["todo"]["title"] == "C"
            assert live["event_id"] > missed["event_id"] or len(live["event_id"]) > len(
                missed["event_id"])  # fmt: skip
