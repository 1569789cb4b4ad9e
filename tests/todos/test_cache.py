"""Cached reads of todos and principals: invalidated by every write, negative entries for
absent ids, and never a stale read for the user who wrote."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client import REGISTRY

from tests.factories import make_account

TODOS = "/api/v1/todos"


def _lookups(kind: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "steward_cache_lookups_total", {"kind": kind, "result": result}
    )
    return value or 0.0


async def test_every_write_is_visible_on_the_next_read(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)

    async def titles() -> list[tuple[str, bool]]:
        page = (await client.get(TODOS, headers=alice.headers)).json()
        return [(t["title"], t["done"]) for t in page["items"]]

    def cached() -> float:  # from this process' near cache or from Redis
        return _lookups("todos_page", "local") + _lookups("todos_page", "hit")

    assert await titles() == []
    hits = cached()
    assert await titles() == []
    assert cached() == hits + 1  # the second read came from the cache

    todo = (await client.post(TODOS, json={"title": "a"}, headers=alice.headers)).json()
    assert await titles() == [("a", False)]
    url = f"{TODOS}/{todo['id']}"
    assert (await client.get(url, headers=alice.headers)).json()["title"] == "a"

    await client.patch(url, json={"title": "b"}, headers=alice.headers)
    assert await titles() == [("b", False)]
    assert (await client.get(url, headers=alice.headers)).json()["title"] == "b"
    await client.post(f"{url}/complete", headers=alice.headers)
    assert await titles() == [("b", True)]
    assert (await client.get(url, headers=alice.headers)).json()["done"] is True
    await client.post(f"{url}/reopen", headers=alice.headers)
    assert await titles() == [("b", False)]
    await client.delete(url, headers=alice.headers)
    assert await titles() == []
    assert (await client.get(url, headers=alice.headers)).status_code == 404


async def test_absent_ids_are_cached_as_negative(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    ghost = f"{TODOS}/{uuid.uuid4()}"
    negatives = _lookups("todo", "negative")
    assert (await client.get(ghost, headers=alice.headers)).status_code == 404
    assert (await client.get(ghost, headers=alice.headers)).status_code == 404
    assert _lookups("todo", "negative") == negatives + 1


async def test_cached_entries_are_per_user(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    todo = (await client.post(TODOS, json={"title": "private"}, headers=alice.headers)).json()
    assert (await client.get(f"{TODOS}/{todo['id']}", headers=alice.headers)).status_code == 200
    assert (await client.get(f"{TODOS}/{todo['id']}", headers=bob.headers)).status_code == 404
    assert (await client.get(TODOS, headers=bob.headers)).json()["items"] == []


async def test_profile_changes_are_visible_at_once(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).json()[
        "display_name"
    ] is None
    await client.patch("/api/v1/users/me", json={"display_name": "Al"}, headers=alice.headers)
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).json()[
        "display_name"
    ] == "Al"
