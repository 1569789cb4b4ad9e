"""Webhooks: a user's notifications POSTed to their URL, signed, retried, dead-lettered.

Every delivery carries `Steward-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 of `"<t>." + body` under the webhook's secret. Receivers recompute it, compare
in constant time, and refuse timestamps older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import orjson
import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.jobs import service as jobs
from steward.notifications.models import Webhook
from steward.platform.errors import NotFound, UnprocessableContent
from steward.settings import Settings

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "Steward-Signature"
DELIVER_TASK = "steward.webhooks.deliver"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (and what the tests do): recompute, compare, check the age."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _invalid_url(detail: str) -> UnprocessableContent:
    return UnprocessableContent(
        detail, errors=[{"loc": ["body", "url"], "msg": detail, "type": "value"}]
    )


async def _check_url(url: str, settings: Settings) -> None:
    if settings.is_prod and urlsplit(url).scheme != "https":
        raise _invalid_url("webhook URLs must use https")
    try:
        await _destination(url, settings)
    except Refused as exc:
        raise _invalid_url(str(exc)) from None
    except DeliveryFailed:
        # Not resolvable now (a name not yet published, a resolver down): accepted, and
        # every delivery resolves and checks again.
        pass


async def set_webhook(
    session: AsyncSession, *, user_id: uuid.UUID, url: str, settings: Settings
) -> Webhook:
    """Create or replace the user's webhook, with a new secret."""
    await _check_url(url, settings)
    secret = f"whsec_{secrets.token_urlsafe(32)}"
    await session.execute(
        insert(Webhook)
        .values(user_id=user_id, url=url, secret=secret)
        .on_conflict_do_update(index_elements=["user_id"], set_={"url": url, "secret": secret})
    )
    webhook = await session.get(Webhook, user_id, populate_existing=True)
    assert webhook is not None
    log.info("webhook.set", user_id=str(user_id))
    return webhook


async def get_webhook(session: AsyncSession, *, user_id: uuid.UUID) -> Webhook:
    webhook = await session.get(Webhook, user_id)
    if webhook is None:
        raise NotFound("no webhook is set")
    return webhook


async def remove_webhook(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    result = await session.execute(
        delete(Webhook).where(Webhook.user_id == user_id).returning(Webhook.user_id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("no webhook is set")


async def deliver_after_commit(
    session: AsyncSession, *, user_id: uuid.UUID, event_type: str, data: dict[str, Any]
) -> None:
    """Send `data` to the user's webhook (if any) once this transaction commits."""
    has_webhook = (
        await session.execute(select(Webhook.user_id).where(Webhook.user_id == user_id))
    ).scalar_one_or_none()
    if has_webhook is None:
        return
    event = {"id": str(uuid.uuid4()), "type": event_type, "created_at": int(time.time()),
             "data": data}  # fmt: skip

    await jobs.enqueue(session, task=DELIVER_TASK, owner_id=user_id,
                       kwargs={"user_id": str(user_id), "event": event})  # fmt: skip


class DeliveryFailed(Exception):
    """The endpoint did not take the delivery; the task retries, then dead-letters."""


class Refused(Exception):
    """The delivery must never be sent (a private address): no retry."""


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str
    body: bytes
    headers: dict[str, str]


def build(webhook: Webhook, event: dict[str, Any]) -> Delivery:
    body = orjson.dumps(event)
    timestamp = int(time.time())
    return Delivery(
        url=webhook.url,
        body=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Steward-Webhooks/1",
            "Steward-Event": str(event["type"]),
            "Steward-Delivery": str(event["id"]),
            SIGNATURE_HEADER: sign(webhook.secret, timestamp, body),
        },
    )


@dataclass(frozen=True, slots=True)
class _Destination:
    """Where a delivery connects: the URL with its host replaced by the address that was
    checked, and what keeps the request addressed to the name (Host header, TLS SNI)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


async def _destination(url: str, settings: Settings) -> _Destination:
    """Resolve the webhook's host once and check every address; the request then goes to
    the checked address itself, so a second lookup (DNS rebinding) cannot redirect it to
    the service's own network. Checked at registration and again at each delivery."""
    if settings.webhook_allow_private:
        return _Destination(url=url, headers={}, extensions={})
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = await anyio.getaddrinfo(host, parts.port or 0, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeliveryFailed(f"cannot resolve {host}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses or any(not address.is_global for address in addresses):
        raise Refused(f"{host} is, or resolves to, a non-public address")
    first = addresses[0]
    netloc = f"[{first}]" if first.version == 6 else str(first)
    if parts.port is not None:
        netloc += f":{parts.port}"
    named = f"[{host}]" if ":" in host else host
    return _Destination(
        url=parts._replace(netloc=netloc).geturl(),
        headers={"Host": named if parts.port is None else f"{named}:{parts.port}"},
        extensions={"sni_hostname": host} if parts.scheme == "https" else {},
    )


async def send(delivery: Delivery, settings: Settings) -> int:
    destination = await _destination(delivery.url, settings)
    try:
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_s) as http:
            response = await http.post(
                destination.url,
                content=delivery.body,
                headers={**delivery.headers, **destination.headers},
                extensions=destination.extensions,
            )
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__} posting to the webhook") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"the webhook answered {response.status_code}")
    return response.status_code
