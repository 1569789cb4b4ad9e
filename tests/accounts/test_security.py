"""Attacks on accounts: forged tokens, mass assignment, scope abuse, disabled users, leaks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI

from tests.conftest import LogCapture
from tests.factories import PASSWORD, login, make_account, make_admin

SECRET = "dev-secret-change-me-0123456789abcdef"  # the test settings' (default) SECRET_KEY


def _forge(claims: dict[str, object], *, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


async def _me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


async def test_tampered_expired_none_and_wrong_audience_tokens_are_rejected(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    good = jwt.decode(account.access_token, options={"verify_signature": False})
    assert (await _me(client, account.access_token)).status_code == 200

    head, body, signature = account.access_token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    now = datetime.now(UTC)
    forged = {
        "tampered signature": f"{head}.{body}.{flipped}",
        "other key": _forge(good, key="x" * 40),
        "expired": _forge(
            {**good, "exp": now - timedelta(minutes=5), "iat": now - timedelta(hours=1)}
        ),
        "not yet valid": _forge({**good, "nbf": now + timedelta(hours=1)}),
        "wrong audience": _forge({**good, "aud": "someone-else"}),
        "wrong issuer": _forge({**good, "iss": "evil"}),
        "no jti": _forge({k: v for k, v in good.items() if k != "jti"}),
        "alg none": jwt.encode(good, None, algorithm="none"),  # type: ignore[arg-type]
        "alg HS512": _forge(good, alg="HS512"),
        "garbage": "not-a-jwt",
        "unknown user": _forge({**good, "sub": str(uuid.uuid4())}),
    }
    for name, token in forged.items():
        response = await _me(client, token)
        assert response.status_code == 401, name
        assert response.headers["content-type"] == "application/problem+json", name


async def test_mass_assignment_is_ignored(client: httpx.AsyncClient) -> None:
    chosen_id = str(uuid.uuid4())
    response = await client.post(
        "/api/v1/auth/register",
        json={
            "email": "mass@example.com",
            "password": PASSWORD,
            "role": "admin",
            "is_active": False,
            "id": chosen_id,
            "scopes": ["admin"],
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["role"] == "user"
    assert body["is_active"] is True
    assert body["id"] != chosen_id
    tokens = await login(client, "mass@example.com")
    admin_list = await client.get(
        "/api/v1/admin/users", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert admin_list.status_code == 403
    me = await client.patch(
        "/api/v1/users/me",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        json={"role": "admin", "display_name": "M"},
    )
    assert me.status_code == 200
    assert me.json()["role"] == "user"


async def test_api_key_secret_shown_once_and_scopes_enforced(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    created = await client.post(
        "/api/v1/api-keys",
        headers=account.headers,
        json={"name": "reader", "scopes": ["todos:read"]},
    )
    assert created.status_code == 201
    key = created.json()
    assert key["secret"].startswith(key["prefix"])
    assert set(key) == {"id", "name", "prefix", "scopes", "expires_at", "secret"}

    listed = await client.get("/api/v1/api-keys", headers=account.headers)
    assert listed.status_code == 200
    assert key["secret"] not in listed.text
    assert [k["id"] for k in listed.json()["items"]] == [key["id"]]

    key_headers = {"x-api-key": key["secret"]}
    assert (await client.get("/api/v1/users/me", headers=key_headers)).status_code == 200
    # A key cannot mint keys, and cannot grant what its owner lacks.
    minted = await client.post(
        "/api/v1/api-keys", headers=key_headers, json={"name": "x", "scopes": ["todos:read"]}
    )
    assert minted.status_code == 403
    escalated = await client.post(
        "/api/v1/api-keys", headers=account.headers, json={"name": "x", "scopes": ["admin"]}
    )
    assert escalated.status_code == 403

    revoked = await client.delete(f"/api/v1/api-keys/{key['id']}", headers=account.headers)
    assert revoked.status_code == 204
    assert (await client.get("/api/v1/users/me", headers=key_headers)).status_code == 401
    assert (
        await client.get("/api/v1/users/me", headers={"x-api-key": "stw_key_bogus"})
    ).status_code == 401


async def test_other_users_keys_are_404(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    key = (
        await client.post(
            "/api/v1/api-keys", headers=alice.headers, json={"name": "a", "scopes": ["todos:read"]}
        )
    ).json()
    response = await client.delete(f"/api/v1/api-keys/{key['id']}", headers=bob.headers)
    assert response.status_code == 404
    assert (
        await client.get("/api/v1/users/me", headers={"x-api-key": key["secret"]})
    ).status_code == 200


async def test_expired_api_key_is_rejected(client: httpx.AsyncClient, app: FastAPI) -> None:
    from sqlalchemy import update

    from steward.accounts.models import ApiKey

    account = await make_account(client)
    past = await client.post(
        "/api/v1/api-keys",
        headers=account.headers,
        json={"name": "old", "scopes": ["todos:read"], "expires_at": "2020-01-01T00:00:00Z"},
    )
    assert past.status_code == 422
    key = (
        await client.post(
            "/api/v1/api-keys",
            headers=account.headers,
            json={"name": "soon", "scopes": ["todos:read"], "expires_at": "2999-01-01T00:00:00Z"},
        )
    ).json()
    async with app.state.resources.sessionmaker.begin() as session:
        await session.execute(
            update(ApiKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (
        await client.get("/api/v1/users/me", headers={"x-api-key": key["secret"]})
    ).status_code == 401


async def test_disabled_user_is_locked_out_at_once(client: httpx.AsyncClient, app: FastAPI) -> None:
    admin = await make_admin(client, app)
    user = await make_account(client)
    key = (
        await client.post(
            "/api/v1/api-keys", headers=user.headers, json={"name": "k", "scopes": ["todos:read"]}
        )
    ).json()
    disabled = await client.patch(
        f"/api/v1/admin/users/{user.id}", headers=admin.headers, json={"is_active": False}
    )
    assert disabled.status_code == 200
    assert disabled.json()["is_active"] is False
    assert (await _me(client, user.access_token)).status_code == 401
    assert (
        await client.get("/api/v1/users/me", headers={"x-api-key": key["secret"]})
    ).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert refreshed.status_code == 401
    sign_in = await client.post(
        "/api/v1/auth/token", data={"username": user.email, "password": user.password}
    )
    assert sign_in.status_code == 401


async def test_admin_endpoints(client: httpx.AsyncClient, app: FastAPI) -> None:
    admin = await make_admin(client, app)
    users = [await make_account(client) for _ in range(3)]
    first = await client.get("/api/v1/admin/users", params={"limit": 2}, headers=admin.headers)
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    second = await client.get(
        "/api/v1/admin/users",
        params={"limit": 2, "cursor": page["next_cursor"]},
        headers=admin.headers,
    )
    ids = [u["id"] for u in page["items"] + second.json()["items"]]
    assert len(ids) == len(set(ids)) == 4
    assert {u.id for u in users} | {admin.id} == set(ids)

    promoted = await client.patch(
        f"/api/v1/admin/users/{users[0].id}", headers=admin.headers, json={"role": "admin"}
    )
    assert promoted.json()["role"] == "admin"
    demoted_self = await client.patch(
        f"/api/v1/admin/users/{admin.id}", headers=admin.headers, json={"role": "user"}
    )
    assert demoted_self.status_code == 409
    bad = await client.patch(
        f"/api/v1/admin/users/{users[1].id}", headers=admin.headers, json={"role": "root"}
    )
    assert bad.status_code == 422
    missing = await client.patch(
        f"/api/v1/admin/users/{uuid.uuid4()}", headers=admin.headers, json={"role": "user"}
    )
    assert missing.status_code == 404
    assert (await client.get("/api/v1/admin/users", headers=users[1].headers)).status_code == 403
    assert (await client.get("/api/v1/admin/users")).status_code == 401
    bad_cursor = await client.get(
        "/api/v1/admin/users", params={"cursor": "!!!"}, headers=admin.headers
    )
    assert bad_cursor.status_code == 422


async def test_demoted_admin_loses_admin_scope_immediately(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first, second = await make_admin(client, app), await make_admin(client, app)
    demoted = await client.patch(
        f"/api/v1/admin/users/{second.id}", headers=first.headers, json={"role": "user"}
    )
    assert demoted.status_code == 200
    assert (await client.get("/api/v1/admin/users", headers=second.headers)).status_code == 403


@pytest.mark.parametrize("service_key", ["service-key-0123456789"])
async def test_static_service_key(
    client: httpx.AsyncClient, app: FastAPI, service_key: str
) -> None:
    from pydantic import SecretStr

    app.state.resources.settings.api_key = SecretStr(service_key)
    listed = await client.get("/api/v1/admin/users", headers={"x-api-key": service_key})
    assert listed.status_code == 200
    me = await client.get("/api/v1/users/me", headers={"x-api-key": service_key})
    assert me.status_code == 403


async def test_no_secret_reaches_the_logs(client: httpx.AsyncClient, logs: LogCapture) -> None:
    account = await make_account(client, password="Very-Secret-Pass-77")
    await client.post(
        "/api/v1/auth/token", data={"username": account.email, "password": "wrong-Pass-123"}
    )
    key = (
        await client.post(
            "/api/v1/api-keys",
            headers=account.headers,
            json={"name": "k", "scopes": ["todos:read"]},
        )
    ).json()
    await client.get("/api/v1/users/me", headers={"x-api-key": key["secret"]})
    rotated = (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    ).json()
    await client.patch(
        "/api/v1/users/me",
        headers={"Authorization": f"Bearer {rotated['access_token']}"},
        json={"current_password": "Very-Secret-Pass-77", "new_password": "Another-Secret-88"},
    )
    text = logs.text
    assert "http.request" in text  # the capture is live
    for secret in (
        "Very-Secret-Pass-77",
        "wrong-Pass-123",
        "Another-Secret-88",
        key["secret"],
        account.access_token,
        account.refresh_token,
        rotated["refresh_token"],
        "$argon2",
    ):
        assert secret not in text


async def test_profile_writes_need_a_session_or_profile_write(client: httpx.AsyncClient) -> None:
    account = await make_account(client)

    async def key(*scopes: str) -> dict[str, str]:
        created = await client.post(
            "/api/v1/api-keys", json={"name": "k", "scopes": list(scopes)}, headers=account.headers
        )
        assert created.status_code == 201, created.text
        return {"x-api-key": created.json()["secret"]}

    reader = await key("todos:read")
    for method, path, body in (
        ("PATCH", "/api/v1/users/me", {"display_name": "Mallory"}),
        ("PUT", "/api/v1/notifications/webhook", {"url": "https://hooks.example.com/in"}),
        ("DELETE", "/api/v1/notifications/webhook", None),
    ):
        refused = await client.request(method, path, json=body, headers=reader)
        assert refused.status_code == 403, (path, refused.text)
    assert (await _me(client, account.access_token)).json()["display_name"] is None
    writer = await key("profile:write")
    renamed = await client.patch("/api/v1/users/me", json={"display_name": "Ada"}, headers=writer)
    assert renamed.status_code == 200
    assert renamed.json()["display_name"] == "Ada"
    by_session = await client.patch(
        "/api/v1/users/me", json={"display_name": "Ada L."}, headers=account.headers
    )
    assert by_session.status_code == 200


async def test_tokens_and_personal_responses_are_never_cached(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    signed_in = await client.post(
        "/api/v1/auth/token", data={"username": account.email, "password": PASSWORD}
    )
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed_in.json()["refresh_token"]}
    )
    me = await _me(client, account.access_token)
    todos = await client.get("/api/v1/todos", headers=account.headers)
    refused = await _me(client, "not-a-token")
    for response in (signed_in, refreshed, me, todos, refused):
        assert response.headers["cache-control"] == "no-store", response.request.url
