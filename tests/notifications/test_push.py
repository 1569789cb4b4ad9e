"""Push over FCM HTTP v1 against a fake FCM this test serves: the service account's signed
JWT is exchanged for an access token (cached), messages have FCM's format, a token FCM
reports gone removes its device, a busy FCM is retried. End to end: a due reminder reaches
the user's device through a real worker."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from steward.jobs.base import TransientError
from steward.notifications.push import FCM_SCOPE, Fcm, PushMessage
from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import free_port
from tests.waiting import wait_until
from tests.workers import running_worker

PROJECT = "steward-test"


class FakeFcm:
    """FCM's token endpoint and messages:send, answering by the device token's prefix:
    `gone-` 404 UNREGISTERED, `busy-` 503, `stale-` 401 once; anything else 200."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.token_requests: list[dict[str, list[str]]] = []
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.stale_once: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/token":
                    fake.token_requests.append(parse_qs(raw.decode()))
                    self._answer(200, {"access_token": f"at-{len(fake.token_requests)}",
                                       "expires_in": 3600, "token_type": "Bearer"})  # fmt: skip
                    return
                body = json.loads(raw)
                token = body["message"]["token"]
                fake.messages.append((self.headers["Authorization"], body))
                if token.startswith("gone-"):
                    self._answer(404, {"error": {"code": 404, "status": "NOT_FOUND", "details": [
                        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "UNREGISTERED"}]}})  # fmt: skip
                elif token.startswith("busy-"):
                    self._answer(503, {"error": {"code": 503, "status": "UNAVAILABLE"}})
                elif token.startswith("stale-") and token not in fake.stale_once:
                    fake.stale_once.add(token)
                    self._answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
                else:
                    self._answer(200, {"name": f"projects/{PROJECT}/messages/{uuid.uuid4().hex}"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def account(self) -> dict[str, str]:
        pem = self.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()  # fmt: skip
        return {"type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
                "private_key": pem, "client_email": f"push@{PROJECT}.iam.example",
                "token_uri": f"{self.url}/token"}  # fmt: skip


@pytest.fixture(scope="module")
def fcm() -> Iterator[FakeFcm]:
    fake = FakeFcm()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()


MESSAGE = PushMessage(title="Pay rent", body="Reminder", data={"kind": "reminder"})


async def test_fcm_messages_are_authorised_and_shaped_as_fcm_wants(fcm: FakeFcm) -> None:
    async with httpx.AsyncClient() as client:
        provider = Fcm(fcm.account(), fcm.url, client)
        before = len(fcm.token_requests)
        assert await provider.send("ok-device-1", MESSAGE) is True
        assert await provider.send("ok-device-2", MESSAGE) is True
        assert len(fcm.token_requests) == before + 1  # the access token is reused
        grant = fcm.token_requests[-1]
        assert grant["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        claims = jwt.decode(grant["assertion"][0], fcm.key.public_key(), algorithms=["RS256"],
                            audience=f"{fcm.url}/token")  # fmt: skip
        assert (claims["iss"], claims["scope"]) == (f"push@{PROJECT}.iam.example", FCM_SCOPE)
        assert claims["exp"] - claims["iat"] == 3600
        authorization, body = fcm.messages[-1]
        assert authorization == f"Bearer at-{len(fcm.token_requests)}"
        assert body == {"message": {"token": "ok-device-2",
                                    "notification": {"title": "Pay rent", "body": "Reminder"},
                                    "data": {"kind": "reminder"}}}  # fmt: skip

        assert await provider.send("gone-device", MESSAGE) is False
        with pytest.raises(TransientError):
            await provider.send("busy-device", MESSAGE)
        # A token FCM stops accepting is replaced once, and the message goes through.
        assert await provider.send(f"stale-{uuid.uuid4().hex}", MESSAGE) is True
        assert len(fcm.token_requests) == before + 2


@pytest.mark.slow
async def test_a_due_reminder_is_pushed_and_a_gone_device_forgotten(
    engines: EngineSet, fcm: FakeFcm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    account_file = tmp_path / "service-account.json"
    account_file.write_text(json.dumps(fcm.account()))
    env = {"FCM_SERVICE_ACCOUNT_FILE": str(account_file), "FCM_BASE_URL": fcm.url}
    alice = await make_account(client)
    phone, old = f"ok-{uuid.uuid4().hex}", f"gone-{uuid.uuid4().hex}"
    for token in (phone, old):
        made = await client.post("/api/v1/devices", headers=alice.headers,
                                 json={"platform": "android", "token": token})  # fmt: skip
        assert made.status_code == 201
    with running_worker(engines, env):
        remind_at = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
        await client.post("/api/v1/todos", json={"title": "Pay rent", "remind_at": remind_at},
                          headers=alice.headers)  # fmt: skip

        def pushed() -> list[dict[str, Any]]:
            return [body for _, body in fcm.messages if body["message"]["token"] == phone]

        [body] = await wait_until(pushed, within_s=30, every_s=0.2, what="the push")
        assert body["message"]["notification"]["title"] == "Pay rent"
        assert body["message"]["data"]["kind"] == "reminder"

        async def forgotten() -> bool:
            listed = (await client.get("/api/v1/devices", headers=alice.headers)).json()
            return len(listed) == 1

        await wait_until(forgotten, within_s=30, every_s=0.2, what="the gone device removed")
        await asyncio.sleep(1)  # a repeat would have arrived by now
    # One push per device: a delivered one is not sent again.
    assert len([b for _, b in fcm.messages if b["message"]["token"] == phone]) == 1


@pytest.mark.usefixtures("clean_state")
async def test_quiet_hours_hold_pushes_back(
    engines: EngineSet, fcm: FakeFcm, tmp_path: Path
) -> None:
    from steward.app import create_app
    from steward.notifications import push
    from steward.notifications.models import Device, Notification, QuietHours
    from tests.conftest import app_client, make_settings

    account_file = tmp_path / "service-account.json"
    account_file.write_text(json.dumps(fcm.account()))
    settings = make_settings(engines, fcm_service_account_file=account_file, fcm_base_url=fcm.url)
    app = create_app(settings)
    async with app_client(app) as http:
        alice = await make_account(http)
        resources = app.state.resources
        token = f"ok-{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        async with resources.transaction() as session:
            user_id = uuid.UUID(alice.id)
            device = Device(id=uuid.uuid4(), user_id=user_id, platform="android", token=token)
            note = Notification(id=uuid.uuid4(), user_id=user_id, kind="reminder", title="Hush")
            quiet = QuietHours(user_id=user_id, start=(now - timedelta(hours=1)).time(),
                               end=(now + timedelta(hours=1)).time(), timezone="UTC")  # fmt: skip
            session.add_all([device, note, quiet])
        assert await push.push_to_device(resources, note.id, device.id) is False
        assert not [b for _, b in fcm.messages if b["message"]["token"] == token]
        async with resources.transaction() as session:
            await session.delete(await session.get(QuietHours, user_id))
        assert await push.push_to_device(resources, note.id, device.id) is True
        assert len([b for _, b in fcm.messages if b["message"]["token"] == token]) == 1
