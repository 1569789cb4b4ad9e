"""One user never sees or touches another's todos (BOLA), for every verb; scopes apply."""

from __future__ import annotations

import httpx

from tests.factories import make_account

TODOS = "/api/v1/todos"


async def test_other_users_todo_is_404_for_every_verb(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    todo = (await client.post(TODOS, json={"title": "alice's"}, headers=alice.headers)).json()
    url = f"{TODOS}/{todo['id']}"

    attempts = [
        client.get(url, headers=bob.headers),
        client.patch(url, json={"title": "bob was here"}, headers=bob.headers),
        client.patch(url, json={"title": "x"}, headers={**bob.headers, "If-Match": "*"}),
        client.delete(url, headers=bob.headers),
        client.post(f"{url}/complete", headers=bob.headers),
        client.post(f"{url}/reopen", headers=bob.headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 404
        assert response.json()["detail"] == "no such todo"

    listed = await client.get(TODOS, headers=bob.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    searched = await client.get(TODOS, params={"q": "alice"}, headers=bob.headers)
    assert searched.json()["items"] == []

    mine = await client.get(url, headers=alice.headers)
    assert mine.status_code == 200
    assert mine.json()["title"] == "alice's"
    assert mine.json()["version"] == 1


async def test_anonymous_is_401(client: httpx.AsyncClient) -> None:
    assert (await client.get(TODOS)).status_code == 401
    assert (await client.post(TODOS, json={"title": "x"})).status_code == 401


async def test_api_key_scopes_are_enforced(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    reader = (
        await client.post(
            "/api/v1/api-keys", json={"name": "r", "scopes": ["todos:read"]}, headers=alice.headers
        )
    ).json()
    writer = (
        await client.post(
            "/api/v1/api-keys", json={"name": "w", "scopes": ["todos:write"]}, headers=alice.headers
        )
    ).json()
    todo = (await client.post(TODOS, json={"title": "t"}, headers=alice.headers)).json()

    read_only = {"x-api-key": reader["secret"]}
    assert (await client.get(TODOS, headers=read_only)).status_code == 200
    assert (await client.get(f"{TODOS}/{todo['id']}", headers=read_only)).status_code == 200
    denied = await client.post(TODOS, json={"title": "no"}, headers=read_only)
    assert denied.status_code == 403
    assert "todos:write" in denied.json()["detail"]
    assert (await client.delete(f"{TODOS}/{todo['id']}", headers=read_only)).status_code == 403

    write_only = {"x-api-key": writer["secret"]}
    assert (await client.post(TODOS, json={"title": "yes"}, headers=write_only)).status_code == 201
    assert (await client.get(TODOS, headers=write_only)).status_code == 403
