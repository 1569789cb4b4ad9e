"""Sessions per device: a user sees where they are signed in (device, platform, address,
last use) and signs one device out, or every other one; what is signed out stops working at
once, refresh and access tokens alike. Nobody else's sessions can be seen or ended."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import app_client
from tests.factories import PASSWORD, Account, make_account

SESSIONS = "/api/v1/users/me/sessions"


async def _sign_in(
    client: httpx.AsyncClient, email: str, name: str | None, platform: str | None
) -> dict[str, Any]:
    headers = {k: v for k, v in (("X-Device-Name", name), ("X-Device-Platform", platform)) if v}
    response = await client.post("/api/v1/auth/token", headers=headers,
                                 data={"username": email, "password": PASSWORD})  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_a_user_lists_devices_and_signs_one_out(app: FastAPI) -> None:
    async with app_client(app, client_ip="203.0.113.7") as client:
        alice = await make_account(client)
        phone = await _sign_in(client, alice.email, "Ada's iPhone", "iOS")
        laptop = await _sign_in(client, alice.email, "Firefox on Linux", "PlayStation")
        listed = (await client.get(SESSIONS, headers=_bearer(phone))).json()
        by_name = {s["device_name"]: s for s in listed}
        assert set(by_name) == {"Ada's iPhone", "Firefox on Linux", None}  # None: make_account's
        assert by_name["Ada's iPhone"]["platform"] == "ios"
        assert by_name["Ada's iPhone"]["current"] is True
        assert by_name["Firefox on Linux"]["platform"] == "other"
        assert by_name["Firefox on Linux"]["current"] is False
        assert {s["ip"] for s in listed} == {"203.0.113.7"}
        assert all(s["last_used_at"] for s in listed)

        gone = await client.delete(f"{SESSIONS}/{by_name['Firefox on Linux']['id']}",
                                   headers=_bearer(phone))  # fmt: skip
        assert gone.status_code == 204
        refused = await client.post("/api/v1/auth/refresh",
                                    json={"refresh_token": laptop["refresh_token"]})  # fmt: skip
        assert refused.status_code == 401
        assert (await client.get("/api/v1/users/me", headers=_bearer(laptop))).status_code == 401
        again = await client.delete(f"{SESSIONS}/{by_name['Firefox on Linux']['id']}",
                                    headers=_bearer(phone))  # fmt: skip
        assert again.status_code == 404
        assert (await client.get("/api/v1/users/me", headers=_bearer(phone))).status_code == 200
        mine = by_name["Ada's iPhone"]["id"]
        itself = await client.delete(f"{SESSIONS}/{mine}", headers=_bearer(phone))
        assert itself.status_code == 409  # this one signs out with /auth/logout


async def test_sign_out_everywhere_else_keeps_this_device(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    devices = [await _sign_in(client, alice.email, f"device {i}", "android") for i in range(3)]
    mine = devices[0]
    out = await client.delete(SESSIONS, headers=_bearer(mine))
    assert out.json() == {"revoked": 3}  # two devices and make_account's sign-in
    assert [s["device_name"] for s in (await client.get(SESSIONS, headers=_bearer(mine))).json()
            ] == ["device 0"]  # fmt: skip
    for other in devices[1:]:
        assert (await client.get("/api/v1/users/me", headers=_bearer(other))).status_code == 401
    rotated = await client.post("/api/v1/auth/refresh",
                                json={"refresh_token": mine["refresh_token"]})  # fmt: skip
    assert rotated.status_code == 200


async def test_nobody_else_sees_or_ends_a_session(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    alices = (await client.get(SESSIONS, headers=alice.headers)).json()
    assert len(alices) == 1
    stolen = await client.delete(f"{SESSIONS}/{alices[0]['id']}", headers=bob.headers)
    assert stolen.status_code == 404
    assert (
        await client.delete(f"{SESSIONS}/{uuid.uuid4()}", headers=bob.headers)
    ).status_code == 404
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 200
    assert (await client.get(SESSIONS)).status_code == 401
    key = await _api_key(client, alice)
    assert (await client.get(SESSIONS, headers={"x-api-key": key})).status_code == 403
    overlong = await client.post("/api/v1/auth/token", headers={"X-Device-Name": "x" * 500},
                                 data={"username": alice.email, "password": PASSWORD})  # fmt: skip
    assert overlong.status_code == 422


def test_device_names_are_kept_printable_and_short() -> None:
    from steward.accounts.sessions import SignInDevice

    device = SignInDevice.from_headers("Ada\x00's\u202e\tphone\n" + "x" * 300, " IOS ", "::1")
    assert device.name is not None and device.name.startswith("Ada 's phone x")
    assert len(device.name) == 100 and device.platform == "ios" and device.ip == "::1"
    assert SignInDevice.from_headers("\x00\x01", None, None).name is None


async def _api_key(client: httpx.AsyncClient, account: Account) -> str:
    scopes = {"name": "k", "scopes": ["todos:read", "profile:write"]}
    made = await client.post("/api/v1/api-keys", headers=account.headers, json=scopes)
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])
