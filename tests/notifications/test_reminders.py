"""Reminders become notifications exactly once, whatever runs twice, and reach the user."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from celery import Celery
from fastapi import FastAPI
from redis.asyncio import Redis

from steward.notifications import service
from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.waiting import wait_until

TODOS = "/api/v1/todos"


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


async def _sweep(app: FastAPI, owner: Account) -> int:
    async with app.state.resources.transaction() as session:
        return await service.send_due_reminders(session, owner_id=uuid.UUID(owner.id))


async def test_due_reminder_becomes_one_notification(
    client: httpx.AsyncClient, app: FastAPI, engines: EngineSet
) -> None:
    alice = await make_account(client)
    due = await client.post(
        TODOS, json={"title": "call mum", "remind_at": _iso(-timedelta(minutes=1))},
        headers=alice.headers,
    )  # fmt: skip
    await client.post(
        TODOS, json={"title": "later", "remind_at": _iso(timedelta(hours=1))},
        headers=alice.headers,
    )  # fmt: skip
    redis = Redis.from_url(engines.redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"user:{alice.id}")
    try:
        results = await asyncio.gather(*(_sweep(app, alice) for _ in range(5)))
        assert sum(results) == 1  # concurrent sweeps: one notification
        assert await _sweep(app, alice) == 0  # and a later one adds nothing
        message = None
        for _ in range(20):
            message = await pubsub.get_message(timeout=0.5)
            if message:
                break
        assert message is not None
        event = orjson.loads(message["data"])
        assert event["type"] == "notification.created"
        assert event["notification"]["todo_id"] == due.json()["id"]
    finally:
        await pubsub.aclose()
        await redis.aclose()

    listed = (await client.get("/api/v1/notifications", headers=alice.headers)).json()
    assert [n["title"] for n in listed["items"]] == ["call mum"]

    # Moving remind_at schedules a new reminder; the old one stays unique.
    await client.patch(
        f"{TODOS}/{due.json()['id']}", json={"remind_at": _iso(-timedelta(seconds=5))},
        headers=alice.headers,
    )  # fmt: skip
    assert await _sweep(app, alice) == 1
    assert (
        len((await client.get("/api/v1/notifications", headers=alice.headers)).json()["items"]) == 2
    )


async def test_done_todos_are_not_reminded(client: httpx.AsyncClient, app: FastAPI) -> None:
    alice = await make_account(client)
    todo = await client.post(
        TODOS, json={"title": "done", "remind_at": _iso(-timedelta(minutes=1))},
        headers=alice.headers,
    )  # fmt: skip
    await client.post(f"{TODOS}/{todo.json()['id']}/complete", headers=alice.headers)
    assert await _sweep(app, alice) == 0


async def test_notifications_api(client: httpx.AsyncClient, app: FastAPI) -> None:
    alice, bob = await make_account(client), await make_account(client)
    for i in range(3):
        await client.post(
            TODOS, json={"title": f"r{i}", "remind_at": _iso(-timedelta(minutes=i + 1))},
            headers=alice.headers,
        )  # fmt: skip
    assert await _sweep(app, alice) == 3
    page = (await client.get("/api/v1/notifications", params={"limit": 2},
                             headers=alice.headers)).json()  # fmt: skip
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = (await client.get("/api/v1/notifications", params={"cursor": page["next_cursor"]},
                             headers=alice.headers)).json()  # fmt: skip
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None
    assert {n["id"] for n in page["items"]}.isdisjoint({n["id"] for n in rest["items"]})
    first = page["items"][0]["id"]
    read = await client.post(f"/api/v1/notifications/{first}/read", headers=alice.headers)
    assert read.status_code == 200
    assert read.json()["read_at"] is not None
    assert (
        await client.post(f"/api/v1/notifications/{first}/read", headers=bob.headers)
    ).status_code == 404
    unread = (await client.get("/api/v1/notifications", params={"unread": "true"},
                               headers=alice.headers)).json()  # fmt: skip
    assert len(unread["items"]) == 2
    marked = await client.post("/api/v1/notifications/read-all", headers=alice.headers)
    assert marked.json() == {"marked": 2}
    unread = (await client.get("/api/v1/notifications", params={"unread": "true"},
                               headers=alice.headers)).json()  # fmt: skip
    assert unread["items"] == []
    assert (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"] == []


async def _notified_titles(client: httpx.AsyncClient, account: Account) -> list[str]:
    """The titles of the account's notifications, once it has any (within 15 s)."""

    async def notified() -> list[dict[str, Any]]:
        return (  # type: ignore[no-any-return]
            await client.get("/api/v1/notifications", headers=account.headers)
        ).json()["items"]

    items = await wait_until(notified, within_s=15, every_s=0.2, what="the notification")
    return [n["title"] for n in items]


@pytest.mark.slow
async def test_sweep_task_runs_on_the_worker(worker: Celery, client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    await client.post(
        TODOS, json={"title": "via worker", "remind_at": _iso(timedelta(seconds=1))},
        headers=alice.headers,
    )  # fmt: skip
    await asyncio.sleep(1.5)  # due now, and only the sweep will find it
    assert worker.send_task("steward.reminders.sweep").get(timeout=30) >= 1

    assert await _notified_titles(client, alice) == ["via worker"]


@pytest.mark.slow
async def test_a_reminder_already_due_is_sent_without_waiting_for_the_sweep(
    worker: Celery, client: httpx.AsyncClient
) -> None:
    assert worker  # the worker that runs the job; no sweep is sent
    alice = await make_account(client)
    created = await client.post(
        TODOS, json={"title": "now please", "remind_at": _iso(-timedelta(seconds=5))},
        headers=alice.headers,
    )  # fmt: skip
    assert created.status_code == 201

    assert await _notified_titles(client, alice) == ["now please"]
