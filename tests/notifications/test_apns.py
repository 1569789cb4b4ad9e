"""Push over APNs against a fake APNs this test serves over HTTP/2 and TLS (hypercorn): the
provider token is an ES256 JWT of the team's key, renewed when Apple calls it expired; the
request has Apple's headers and payload; a gone token (410, BadDeviceToken) forgets the
device; a busy APNs is retried."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from steward.jobs.base import TransientError
from steward.notifications.push import Apns, PushMessage
from tests.deploy.nginx import _certificate
from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import free_port

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "dev.steward.app"


class FakeApns:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.requests: list[dict[str, Any]] = []
        self.expired_once: set[str] = set()

    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()  # fmt: skip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        token = scope["path"].rsplit("/", 1)[-1]
        self.requests.append({"http_version": scope["http_version"], "path": scope["path"],
                              "headers": headers, "json": json.loads(body)})  # fmt: skip
        status, reason = 200, None
        if token.startswith("gone-"):
            status, reason = 410, "Unregistered"
        elif token.startswith("bad-"):
            status, reason = 400, "BadDeviceToken"
        elif token.startswith("busy-"):
            status, reason = 503, "ServiceUnavailable"
        elif token.startswith("expired-") and token not in self.expired_once:
            self.expired_once.add(token)
            status, reason = 403, "ExpiredProviderToken"
        payload = json.dumps({"reason": reason}).encode() if reason else b""
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"apns-id", str(uuid.uuid4()).encode()),
                                (b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def apns(tmp_path: Path) -> AsyncIterator[tuple[FakeApns, str, Path]]:
    fake = FakeApns()
    certificate = _certificate(tmp_path / "tls")
    config = Config()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(certificate), str(certificate.parent / "privkey.pem")
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(fake, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    yield fake, f"https://127.0.0.1:{port}", certificate
    stop.set()
    await asyncio.wait_for(task, 10)


MESSAGE = PushMessage(title="Pay rent", body="Reminder", data={"kind": "reminder"})


async def test_apns_requests_are_http2_signed_and_shaped_as_apple_wants(
    apns: tuple[FakeApns, str, Path],
) -> None:
    fake, url, certificate = apns
    tls = ssl.create_default_context(cafile=str(certificate))
    async with httpx.AsyncClient(http2=True, verify=tls) as client:
        provider = Apns(key=fake.key_pem(), key_id=KEY_ID, team_id=TEAM, topic=TOPIC,
                        base_url=url, client=client)  # fmt: skip
        assert await provider.send("ok-1", MESSAGE) is True
        assert await provider.send("ok-2", MESSAGE) is True
        first, second = fake.requests[-2:]
        assert first["http_version"] == "2" and first["path"] == "/3/device/ok-1"
        headers = first["headers"]
        assert (headers["apns-topic"], headers["apns-push-type"], headers["apns-priority"]) == (
            TOPIC, "alert", "10")  # fmt: skip
        token = headers["authorization"].removeprefix("bearer ")
        assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
        assert jwt.decode(token, fake.key.public_key(), algorithms=["ES256"])["iss"] == TEAM
        assert second["headers"]["authorization"] == headers["authorization"]  # reused
        assert first["json"] == {"aps": {"alert": {"title": "Pay rent", "body": "Reminder"},
                                         "sound": "default"}, "kind": "reminder"}  # fmt: skip

        assert await provider.send("gone-1", MESSAGE) is False
        assert await provider.send("bad-1", MESSAGE) is False
        with pytest.raises(TransientError):
            await provider.send("busy-1", MESSAGE)
        count = len(fake.requests)
        assert await provider.send("expired-1", MESSAGE) is True  # a new token, one more try
        assert len(fake.requests) == count + 2


@pytest.mark.usefixtures("clean_state")
async def test_an_ios_device_gets_its_push_and_a_gone_one_is_forgotten(
    engines: EngineSet, apns: tuple[FakeApns, str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from steward.app import create_app
    from steward.notifications import push
    from steward.notifications.models import Device, Notification
    from tests.conftest import app_client, make_settings

    fake, url, certificate = apns
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # this APNs' certificate is trusted
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(fake.key_pem())
    settings = make_settings(engines, apns_key_file=key_file, apns_key_id=KEY_ID,
                             apns_team_id=TEAM, apns_topic=TOPIC, apns_base_url=url)  # fmt: skip
    app = create_app(settings)
    async with app_client(app) as http:
        alice = await make_account(http)
        resources = app.state.resources
        user_id = uuid.UUID(alice.id)
        phone = Device(id=uuid.uuid4(), user_id=user_id, platform="ios", token="ok-phone")
        old = Device(id=uuid.uuid4(), user_id=user_id, platform="ios", token="gone-old")
        note = Notification(id=uuid.uuid4(), user_id=user_id, kind="reminder", title="Hi")
        async with resources.transaction() as session:
            session.add_all([phone, old, note])
        assert await push.push_to_device(resources, note.id, phone.id) is True
        assert await push.push_to_device(resources, note.id, old.id) is False
        listed = (await http.get("/api/v1/devices", headers=alice.headers)).json()
        assert [d["id"] for d in listed] == [str(phone.id)]
        assert fake.requests[-2]["json"]["aps"]["alert"]["title"] == "Hi"
