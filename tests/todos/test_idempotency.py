"""Idempotent creation: one todo per key, even under concurrency; a changed body is refused."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from steward.todos.models import Todo
from tests.factories import make_account

TODOS = "/api/v1/todos"


async def _count(app: FastAPI) -> int:
    async with app.state.resources.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(Todo))).scalar_one())


async def test_same_key_and_body_replays_the_first_response(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    alice = await make_account(client)
    headers = {**alice.headers, "Idempotency-Key": "create-1"}
    first = await client.post(TODOS, json={"title": "once"}, headers=headers)
    second = await client.post(TODOS, json={"title": "once"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _count(app) == 1

    changed = await client.post(TODOS, json={"title": "twice"}, headers=headers)
    assert changed.status_code == 422
    assert "different request body" in changed.json()["detail"]
    assert await _count(app) == 1


async def test_keys_are_per_user(client: httpx.AsyncClient, app: FastAPI) -> None:
    alice, bob = await make_account(client), await make_account(client)
    for account in (alice, bob):
        response = await client.post(
            TODOS, json={"title": "mine"}, headers={**account.headers, "Idempotency-Key": "k"}
        )
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert await _count(app) == 2


async def test_twenty_concurrent_posts_create_exactly_one(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    alice = await make_account(client)
    headers = {**alice.headers, "Idempotency-Key": "burst-7"}
    responses = await asyncio.gather(
        *(client.post(TODOS, json={"title": "burst"}, headers=headers) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert await _count(app) == 1


async def test_invalid_key_is_422(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    for key in ("", "x" * 256, "has space"):
        response = await client.post(
            TODOS, json={"title": "t"}, headers={**alice.headers, "Idempotency-Key": key}
        )
        assert response.status_code == 422, key
