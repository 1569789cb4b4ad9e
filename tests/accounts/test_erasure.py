"""An account's data, all of it: the export holds every owned row (and no secret), and
deleting the account removes every owned row and Redis run log and ends every credential.
Deleting needs the password, or a sign-in less than five minutes old."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import func, select, update

from steward.accounts.erasure import _owned_tables
from steward.accounts.models import LoginSession
from steward.assistant.streams import stream_key
from tests.engines import EngineSet
from tests.factories import PASSWORD, Account, login, make_account


async def _fill(client: httpx.AsyncClient, account: Account) -> dict[str, str]:
    """A todo, a conversation with a run, an API key and a document; the ids made."""
    todo = await client.post("/api/v1/todos", json={"title": "secret plans"},
                             headers=account.headers)  # fmt: skip
    conversation = (await client.post("/api/v1/assistant/conversations", json={"title": "c"},
                                      headers=account.headers)).json()["id"]  # fmt: skip
    answer = await client.post(f"/api/v1/assistant/conversations/{conversation}/messages",
                               json={"content": "hello"}, headers=account.headers)  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    key = await client.post("/api/v1/api-keys", headers=account.headers,
                            json={"name": "k", "scopes": ["todos:read"]})  # fmt: skip
    document = await client.post("/api/v1/knowledge/documents", headers=account.headers,
                                 json={"title": "diary", "text": "dear diary"})  # fmt: skip
    assert document.status_code == 202, document.text
    return {"todo": todo.json()["id"], "conversation": conversation,
            "key": key.json()["secret"]}  # fmt: skip


async def test_the_export_holds_everything_owned_and_no_secret(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    made = await _fill(client, alice)
    await _fill(client, bob)
    exported = await client.get("/api/v1/users/me/export", headers=alice.headers)
    assert exported.status_code == 200
    data = exported.json()
    assert data["profile"]["email"] == alice.email
    assert [t["id"] for t in data["todos"]] == [made["todo"]]
    assert [c["id"] for c in data["conversations"]] == [made["conversation"]]
    assert {m["role"] for m in data["messages"]} >= {"user", "assistant"}
    assert len(data["runs"]) == 1 and len(data["api_keys"]) == 1
    assert [d["title"] for d in data["knowledge_documents"]] == ["diary"]
    assert len(data["sessions"]) == 1
    text = exported.text
    for secret in ("password_hash", "key_hash", "token_hash", made["key"], bob.email):
        assert secret not in text
    key = {"x-api-key": made["key"]}
    assert (await client.get("/api/v1/users/me/export", headers=key)).status_code == 403


async def test_deleting_needs_proof_then_removes_everything(
    client: httpx.AsyncClient, app: FastAPI, engines: EngineSet
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    made = await _fill(client, alice)
    await _fill(client, bob)
    resources = app.state.resources
    async with resources.transaction() as session:  # alice signed in an hour ago
        await session.execute(
            update(LoginSession).where(LoginSession.user_id == uuid.UUID(alice.id))
            .values(created_at=datetime.now(UTC) - timedelta(hours=1))
        )  # fmt: skip
    redis = Redis.from_url(engines.redis_url)
    try:
        runs = await client.get("/api/v1/users/me/export", headers=alice.headers)
        run_id = runs.json()["runs"][0]["id"]
        assert await redis.exists(stream_key(run_id))

        bare = await client.request("DELETE", "/api/v1/users/me", headers=alice.headers)
        assert bare.status_code == 403
        assert bare.json()["type"].endswith("/reauthentication-required")
        wrong = await client.request("DELETE", "/api/v1/users/me", headers=alice.headers,
                                     json={"password": "not-the-password-1"})  # fmt: skip
        assert wrong.status_code == 403
        with_key = {"x-api-key": made["key"]}
        by_key = await client.request("DELETE", "/api/v1/users/me", headers=with_key,
                                      json={"password": PASSWORD})  # fmt: skip
        assert by_key.status_code == 403
        gone = await client.request("DELETE", "/api/v1/users/me", headers=alice.headers,
                                    json={"password": PASSWORD})  # fmt: skip
        assert gone.status_code == 204

        assert not await redis.exists(stream_key(run_id))
        assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 401
        assert (await client.get("/api/v1/todos", headers={"x-api-key": made["key"]})
                ).status_code == 401  # fmt: skip
        refreshed = await client.post("/api/v1/auth/refresh",
                                      json={"refresh_token": alice.refresh_token})  # fmt: skip
        assert refreshed.status_code == 401
        form = {"username": alice.email, "password": PASSWORD}
        signed_in = await client.post("/api/v1/auth/token", data=form)
        assert signed_in.status_code == 401
        async with resources.transaction() as session:
            for table, column, parent, _ in _owned_tables():
                if parent is None:
                    mine = table.c[column] == uuid.UUID(alice.id)
                    left = await session.scalar(select(func.count()).select_from(table).where(mine))
                    assert left == 0, table.name
        # Bob's data is untouched.
        assert len((await client.get("/api/v1/todos", headers=bob.headers)).json()["items"]) == 1
    finally:
        await redis.aclose()


async def test_a_fresh_sign_in_deletes_without_the_password(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    fresh = await login(client, alice.email)
    bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    gone = await client.request("DELETE", "/api/v1/users/me", headers=bearer)
    assert gone.status_code == 204
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 401
