"""Webhooks: set and read one's own, signed deliveries by a real worker, retries ending in a
dead letter, and no deliveries to private addresses unless allowed."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from celery import Celery
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from steward.notifications import webhooks
from steward.notifications.models import Webhook
from steward.settings import Settings
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import Account, make_account, make_admin
from tests.live import serve_asgi
from tests.waiting import wait_until
from tests.workers import running_worker

pytestmark = pytest.mark.usefixtures("clean_state")
HOOK = "/api/v1/notifications/webhook"


class Receiver:
    """An HTTP endpoint that records what it is sent and answers scripted statuses."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.url = ""
        self.app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
def settings(engines: EngineSet, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings; tests that post to a local receiver allow private addresses."""
    return make_settings(engines, **getattr(request, "param", {}))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    async with serve_asgi(hook.app) as base:
        hook.url = f"{base}/hook"
        yield hook


@pytest.fixture(scope="module")
def webhook_worker(engines: EngineSet) -> Iterator[Celery]:
    env = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_MAX_RETRIES": "2",
           "WEBHOOK_RETRY_BASE_S": "0.05"}  # fmt: skip
    with running_worker(engines, extra_env=env) as (client, _):
        yield client


async def _due_reminder(client: httpx.AsyncClient, account: Account, title: str) -> None:
    remind_at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    created = await client.post("/api/v1/todos", json={"title": title, "remind_at": remind_at},
                                headers=account.headers)  # fmt: skip
    assert created.status_code == 201


async def _wait(condition: Any, within_s: float = 20) -> None:
    await wait_until(condition, within_s=within_s)


async def test_webhook_is_the_owners_and_its_secret_is_shown_once(
    client: httpx.AsyncClient,
) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    assert (await client.put(HOOK, json={"url": "https://example.com/h"})).status_code == 401
    assert (
        await client.put(HOOK, json={"url": "not a url"}, headers=alice.headers)
    ).status_code == 422
    created = await client.put(HOOK, json={"url": "https://example.com/h"}, headers=alice.headers)
    assert created.status_code == 201
    assert created.json()["secret"].startswith("whsec_")
    shown = (await client.get(HOOK, headers=alice.headers)).json()
    assert shown["url"] == "https://example.com/h" and "secret" not in shown
    assert (await client.get(HOOK, headers=bob.headers)).status_code == 404
    rotated = await client.put(HOOK, json={"url": "https://example.com/h"}, headers=alice.headers)
    assert rotated.json()["secret"] != created.json()["secret"]
    assert (await client.delete(HOOK, headers=alice.headers)).status_code == 204
    assert (await client.get(HOOK, headers=alice.headers)).status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"webhook_allow_private": True}], indirect=True)
async def test_reminder_is_delivered_signed(
    client: httpx.AsyncClient, receiver: Receiver, webhook_worker: Celery
) -> None:
    alice = await make_account(client)
    secret = (await client.put(HOOK, json={"url": receiver.url}, headers=alice.headers)).json()[
        "secret"
    ]
    await _due_reminder(client, alice, "water the plants")
    webhook_worker.send_task("steward.reminders.send", args=[alice.id])
    await _wait(lambda: receiver.received)
    headers, body = receiver.received[0]
    assert webhooks.verify(secret, headers["steward-signature"], body)
    assert not webhooks.verify(secret, headers["steward-signature"], body + b" ")
    assert not webhooks.verify("whsec_other", headers["steward-signature"], body)
    event = orjson.loads(body)
    assert headers["steward-event"] == event["type"] == "notification.created"
    assert event["data"]["title"] == "water the plants"
    assert headers["steward-delivery"] == event["id"]


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"webhook_allow_private": True}], indirect=True)
async def test_failing_endpoint_is_retried_then_dead_lettered(
    client: httpx.AsyncClient, app: FastAPI, receiver: Receiver, webhook_worker: Celery
) -> None:
    admin = await make_admin(client, app)
    alice = await make_account(client)
    await client.put(HOOK, json={"url": receiver.url}, headers=alice.headers)
    receiver.statuses = [500, 503, 502, 500]
    await _due_reminder(client, alice, "will fail")
    webhook_worker.send_task("steward.reminders.send", args=[alice.id])

    async def dead_letters() -> list[dict[str, Any]]:
        listed = await client.get("/api/v1/admin/dead-letters", headers=admin.headers)
        return [d for d in listed.json()["items"] if d["task_name"] == webhooks.DELIVER_TASK]

    letters = await wait_until(dead_letters, within_s=30, every_s=0.1, what="a dead letter")
    assert len(receiver.received) == 3  # the first try and max_retries=2 retries
    assert letters[0]["attempts"] == 3
    assert letters[0]["exception"].endswith("the webhook answered 502")  # the last try


async def test_private_addresses_are_refused_unless_allowed(engines: EngineSet) -> None:
    event = {"id": "e1", "type": "notification.created", "data": {}}
    delivery = webhooks.build(Webhook(url="http://127.0.0.1:9/hook", secret="whsec_x"), event)
    strict: Settings = make_settings(engines)
    with pytest.raises(webhooks.Refused):
        await webhooks.send(delivery, strict)
    relaxed = make_settings(engines, webhook_allow_private=True, webhook_timeout_s=1)
    with pytest.raises(webhooks.DeliveryFailed):  # allowed, but nothing listens there
        await webhooks.send(delivery, relaxed)


def test_signatures_expire() -> None:
    body = b'{"a":1}'
    old = webhooks.sign("whsec_k", int(time.time()) - 3600, body)
    assert not webhooks.verify("whsec_k", old, body)
    fresh = webhooks.sign("whsec_k", int(time.time()), body)
    assert webhooks.verify("whsec_k", fresh, body)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/h", "http://[::1]/h", "http://2130706433/h", "http://169.254.169.254/x",
     "http://10.0.0.8:8080/h", "http://localhost/h", "http://[::ffff:127.0.0.1]/h"],
)  # fmt: skip
async def test_private_webhook_urls_are_refused_at_registration(
    client: httpx.AsyncClient, url: str
) -> None:
    alice = await make_account(client)
    response = await client.put(HOOK, json={"url": url}, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "url"]


async def test_a_delivery_goes_to_the_address_that_was_checked(
    engines: EngineSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = [[("93.184.216.34", 443)], [("93.184.216.34", 443), ("10.0.0.8", 443)]]

    async def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in answers.pop(0)]

    monkeypatch.setattr(webhooks.anyio, "getaddrinfo", resolve)
    strict = make_settings(engines)
    pinned = await webhooks._destination("https://hooks.example:8443/in?x=1", strict)
    assert pinned.url == "https://93.184.216.34:8443/in?x=1"
    assert pinned.headers == {"Host": "hooks.example:8443"}
    assert pinned.extensions == {"sni_hostname": "hooks.example"}
    with pytest.raises(webhooks.Refused):  # one private answer among public ones is enough
        await webhooks._destination("https://hooks.example/in", strict)


@pytest.mark.slow
async def test_a_refused_delivery_is_one_log_line_and_no_retry(
    client: httpx.AsyncClient, app: FastAPI, engines: EngineSet
) -> None:
    """A webhook stored before the rules tightened (or by hand) points inward: its delivery
    is refused at once, logged as one line, neither retried nor traced back."""
    from tests.workers import LOG

    alice = await make_account(client)
    async with app.state.resources.transaction() as session:
        session.add(Webhook(user_id=uuid.UUID(alice.id), url="http://127.0.0.1:9/h",
                            secret="whsec_x"))  # fmt: skip
    start = LOG.stat().st_size if LOG.exists() else 0
    # A broker of its own: the module's permissive worker must not take this delivery.
    own_broker = engines.redis_spare(2)
    with running_worker(engines, broker=own_broker) as (celery, _):
        event = {"id": "e-refused", "type": "notification.created", "data": {}}
        result = celery.send_task(
            webhooks.DELIVER_TASK, kwargs={"user_id": alice.id, "event": event}
        )
        assert await asyncio.to_thread(result.get, 30) is None
        with LOG.open() as log:  # read before the worker stops (its shutdown logs too)
            log.seek(start)
            written = log.read()
    refused = [line for line in written.splitlines() if "webhook.refused" in line]
    assert len(refused) == 1, written[-2000:]
    assert "Traceback" not in written
    assert "retry" not in refused[0].lower()
