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


async def test_quiet_hours_are_set_read_and_cleared(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    assert (await client.get(f"{DEVICES}/quiet-hours", headers=alice.headers)).status_code == 404
    night = {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}
    made = await client.put(f"{DEVICES}/quiet-hours", headers=alice.headers, json=night)
    assert made.status_code == 200 and made.json() == {**night, "start": "22:00:00",
                                                       "end": "07:00:00"}  # fmt: skip
    for bad in ({**night, "timezone": "Mars/Olympus"}, {**night, "start": "25:00"},
                {**night, "extra": 1}):  # fmt: skip
        refused = await client.put(f"{DEVICES}/quiet-hours", headers=alice.headers, json=bad)
        assert refused.status_code == 422, bad
    cleared = await client.delete(f"{DEVICES}/quiet-hours", headers=alice.headers)
    assert cleared.status_code == 204
    assert (await client.get(f"{DEVICES}/quiet-hours", headers=alice.headers)).status_code == 404


def test_quiet_hours_follow_the_users_time_zone_and_midnight() -> None:
    from datetime import UTC, datetime, time

    from steward.notifications.devices import is_quiet
    from steward.notifications.models import QuietHours

    night = QuietHours(start=time(22), end=time(7), timezone="Asia/Shanghai")  # UTC+8
    at = lambda hour, minute=0: datetime(2026, 12, 4, hour, minute, tzinfo=UTC)  # noqa: E731
    assert is_quiet(night, at(14))  # 22:00 in Shanghai
    assert is_quiet(night, at(22, 59))  # 06:59 the next morning
    assert not is_quiet(night, at(23))  # 07:00: over
    assert not is_quiet(night, at(4))  # noon
    lunch = QuietHours(start=time(12), end=time(13), timezone="UTC")
    assert is_quiet(lunch, at(12, 30)) and not is_quiet(lunch, at(13))
    assert not is_quiet(None, at(12))
