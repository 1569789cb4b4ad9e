"""Every todo write publishes `{type, todo}` on the owner's channel after commit."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from tests.engines import EngineSet
from tests.factories import make_account

TODOS = "/api/v1/todos"


async def test_writes_publish_change_events(client: httpx.AsyncClient, engines: EngineSet) -> None:
    alice, bob = await make_account(client), await make_account(client)
    redis = Redis.from_url(engines.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"user:{alice.id}", f"user:{bob.id}")
    await pubsub.get_message(timeout=1)
    await pubsub.get_message(timeout=1)
    try:
        todo = (await client.post(TODOS, json={"title": "t"}, headers=alice.headers)).json()
        url = f"{TODOS}/{todo['id']}"
        await client.patch(url, json={"title": "t2"}, headers=alice.headers)
        await client.post(f"{url}/complete", headers=alice.headers)
        await client.post(f"{url}/reopen", headers=alice.headers)
        await client.delete(url, headers=alice.headers)
        # A failed write (validation) and another user's attempt publish nothing.
        await client.patch(url, json={"title": ""}, headers=alice.headers)
        await client.delete(url, headers=bob.headers)

        events: list[tuple[str, dict[str, Any]]] = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(events) < 5 and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                events.append((message["channel"].decode(), orjson.loads(message["data"])))
        extra = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    finally:
        await pubsub.aclose()
        await redis.aclose()

    assert extra is None
    assert {channel for channel, _ in events} == {f"user:{alice.id}"}
    assert [e["type"] for _, e in events] == [
        "todo.created", "todo.updated", "todo.updated", "todo.updated", "todo.deleted",
    ]  # fmt: skip
    assert [e["todo"]["version"] for _, e in events] == [1, 2, 3, 4, 4]
    assert events[2][1]["todo"]["done"] is True
    assert all(e["todo"]["id"] == todo["id"] for _, e in events)
