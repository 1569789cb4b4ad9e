"""Keyset pagination: stable under concurrent inserts, opaque cursors, every sort order."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tests.factories import Account, make_account

TODOS = "/api/v1/todos"


async def _all_pages(
    client: httpx.AsyncClient, account: Account, *, limit: int, sort: str, during: object = None
) -> list[str]:
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, object] = {"limit": limit, "sort": sort}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(TODOS, params=params, headers=account.headers)).json()
        seen.extend(t["id"] for t in page["items"])
        if callable(during):
            await during()
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


@pytest.mark.parametrize(
    "sort", ["-created_at", "created_at", "due_at", "-due_at", "-priority", "priority"]
)
async def test_no_duplicates_or_gaps_while_rows_are_inserted(
    client: httpx.AsyncClient, sort: str
) -> None:
    alice = await make_account(client)
    rng = random.Random(sort)
    existing = []
    for i in range(37):
        body: dict[str, object] = {"title": f"t{i}", "priority": rng.randint(0, 3)}
        if rng.random() < 0.7:
            body["due_at"] = f"2030-01-{rng.randint(1, 28):02d}T00:00:00Z"
        existing.append((await client.post(TODOS, json=body, headers=alice.headers)).json()["id"])

    async def insert_more() -> None:
        await asyncio.gather(
            *(
                client.post(
                    TODOS,
                    json={
                        "title": "late",
                        "priority": rng.randint(0, 3),
                        "due_at": f"2030-01-{rng.randint(1, 28):02d}T00:00:00Z",
                    },
                    headers=alice.headers,
                )
                for _ in range(3)
            )
        )

    seen = await _all_pages(client, alice, limit=5, sort=sort, during=insert_more)
    assert len(seen) == len(set(seen)), "a todo appeared twice"
    assert set(existing) <= set(seen), "a todo that existed before paging was skipped"


async def test_cursor_is_opaque_and_checked(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    for i in range(3):
        await client.post(TODOS, json={"title": f"t{i}"}, headers=alice.headers)
    page = (await client.get(TODOS, params={"limit": 2}, headers=alice.headers)).json()
    assert page["next_cursor"]
    for bad in ("garbage", "eyJ4IjoxfQ", page["next_cursor"][:-3]):
        response = await client.get(TODOS, params={"cursor": bad}, headers=alice.headers)
        assert response.status_code == 422, bad
    other_sort = await client.get(
        TODOS, params={"cursor": page["next_cursor"], "sort": "due_at"}, headers=alice.headers
    )
    assert other_sort.status_code == 422
    last = await client.get(
        TODOS, params={"cursor": page["next_cursor"], "limit": 2}, headers=alice.headers
    )
    assert len(last.json()["items"]) == 1
    assert last.json()["next_cursor"] is None
