"""Devices for push: registered, listed and forgotten by their owner only; a token
registered again moves to the newest account (never delivered to two users)."""

from __future__ import annotations

import uuid

import httpx

from tests.factories import make_account

DEVICES = "/api/v1/devices"


async def test_devices_are_registered_listed_moved_and_forgotten(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    token = f"fcm-{uuid.uuid4().hex}"
    pixel = {"platform": "android", "token": token, "name": "Pixel"}
    made = await client.post(DEVICES, headers=alice.headers, json=pixel)
    assert made.status_code == 201, made.text
    assert "token" not in made.json()  # not echoed back
    again = await client.post(DEVICES, headers=alice.headers, json={**pixel, "name": "Pixel 9"})
    assert again.json()["id"] == made.json()["id"]  # the same device, renamed
    listed = (await client.get(DEVICES, headers=alice.headers)).json()
    assert [(d["name"], d["platform"]) for d in listed] == [("Pixel 9", "android")]

    moved = await client.post(DEVICES, headers=bob.headers,
                              json={"platform": "android", "token": token})  # fmt: skip
    assert moved.status_code == 201
    assert (await client.get(DEVICES, headers=alice.headers)).json() == []
    assert len((await client.get(DEVICES, headers=bob.headers)).json()) == 1

    stolen = await client.delete(f"{DEVICES}/{moved.json()['id']}", headers=alice.headers)
    assert stolen.status_code == 404
    gone = await client.delete(f"{DEVICES}/{moved.json()['id']}", headers=bob.headers)
    assert gone.status_code == 204
    assert (await client.get(DEVICES, headers=bob.headers)).json() == []


async def test_bad_device_input_is_refused(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    for body in ({"platform": "blackberry", "token": "t" * 20},
                 {"platform": "ios", "token": "short"},
                 {"platform": "ios", "token": "a\x00b" * 10},
                 {"platform": "ios", "token": "t" * 5000},
                 {"platform": "ios", "token": "t" * 20, "extra": 1}):  # fmt: skip
        refused = await client.post(DEVICES, headers=alice.headers, json=body)
        assert refused.status_code == 422, body
    assert (await client.post(DEVICES, json={"platform": "ios", "token": "t" * 20})
            ).status_code == 401  # fmt: skip
    made = await client.post("/api/v1/api-keys", headers=alice.headers,
                             json={"name": "read", "scopes": ["todos:read"]})  # fmt: skip
    narrow = {"x-api-key": made.json()["secret"]}
    refused = await client.post(
        DEVICES, headers=narrow, json={"platform": "ios", "token": "t" * 20}
    )
    assert refused.status_code == 403
