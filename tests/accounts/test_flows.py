"""The whole account life cycle, as a mobile client drives it."""

from __future__ import annotations

import httpx
import jwt

from tests.factories import PASSWORD, login, make_account


async def test_register_login_me_refresh_reuse_logout(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/auth/register",
        json={"email": "  Alice@Example.COM ", "password": PASSWORD, "display_name": "Alice"},
    )
    assert created.status_code == 201
    assert created.json()["email"] == "alice@example.com"
    assert "password" not in created.text and "hash" not in created.text

    tokens = await login(client, "ALICE@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await client.get("/api/v1/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["display_name"] == "Alice"
    assert me.json()["role"] == "user"

    rotated = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert rotated.status_code == 200
    fresh = rotated.json()
    assert fresh["refresh_token"] != tokens["refresh_token"]
    fresh_headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=fresh_headers)).status_code == 200

    # The spent token comes back (stolen copy): the whole family is revoked.
    reused = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert reused.status_code == 401
    assert reused.json()["type"].endswith("/refresh-token-reused")
    for token in (fresh["refresh_token"],):
        again = await client.post("/api/v1/auth/refresh", json={"refresh_token": token})
        assert again.status_code == 401
    assert (await client.get("/api/v1/users/me", headers=fresh_headers)).status_code == 401

    # A new sign-in works, and logout revokes that session.
    tokens = await login(client, "alice@example.com")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert out.status_code == 204
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 401
    after = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert after.status_code == 401


async def test_access_token_claims(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    assert claims["iss"] == "steward"
    assert claims["aud"] == "steward-api"
    assert claims["sub"] == account.id
    assert {"exp", "iat", "nbf", "jti", "sid"} <= claims.keys()
    assert set(claims["scope"].split()) == {
        "todos:read", "todos:write", "assistant", "knowledge:read", "knowledge:write",
        "profile:write",
    }  # fmt: skip
    assert jwt.get_unverified_header(account.access_token)["alg"] == "HS256"


async def test_duplicate_email_is_409(client: httpx.AsyncClient) -> None:
    await make_account(client, email="dup@example.com")
    again = await client.post(
        "/api/v1/auth/register", json={"email": "DUP@example.com", "password": PASSWORD}
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"


async def test_password_policy(client: httpx.AsyncClient) -> None:
    cases = {
        "short1!": "at least 10",
        "1234567890123": "only digits",
        "onlyletterspassword": "only letters",
        "pol@example.com": "email address",
    }
    for password, reason in cases.items():
        response = await client.post(
            "/api/v1/auth/register", json={"email": "pol@example.com", "password": password}
        )
        assert response.status_code == 422, password
        assert reason in response.text
        assert password not in response.text


async def test_wrong_email_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    await make_account(client, email="known@example.com")
    wrong_password = await client.post(
        "/api/v1/auth/token", data={"username": "known@example.com", "password": "nope-nope-1"}
    )
    no_user = await client.post(
        "/api/v1/auth/token", data={"username": "ghost@example.com", "password": "nope-nope-1"}
    )
    assert wrong_password.status_code == no_user.status_code == 401
    strip = {"request_id", "instance"}
    assert {k: v for k, v in wrong_password.json().items() if k not in strip} == {
        k: v for k, v in no_user.json().items() if k not in strip
    }
    assert wrong_password.headers["www-authenticate"] == "Bearer"


async def test_password_change_needs_current_and_revokes_other_sessions(
    client: httpx.AsyncClient,
) -> None:
    account = await make_account(client)
    other = await login(client, account.email)
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}

    wrong = await client.patch(
        "/api/v1/users/me",
        headers=account.headers,
        json={"current_password": "not-it-at-all-9", "new_password": "brand-new-pass-7"},
    )
    assert wrong.status_code == 422
    missing = await client.patch(
        "/api/v1/users/me", headers=account.headers, json={"new_password": "brand-new-pass-7"}
    )
    assert missing.status_code == 422

    changed = await client.patch(
        "/api/v1/users/me",
        headers=account.headers,
        json={"current_password": PASSWORD, "new_password": "brand-new-pass-7"},
    )
    assert changed.status_code == 200
    assert (await client.get("/api/v1/users/me", headers=account.headers)).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=other_headers)).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
    )
    assert refreshed.status_code == 401
    await login(client, account.email, "brand-new-pass-7")


async def test_display_name_update(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    response = await client.patch(
        "/api/v1/users/me", headers=account.headers, json={"display_name": "Bob"}
    )
    assert response.status_code == 200
    assert response.json()["display_name"] == "Bob"
