"""Push notifications to devices. Each platform's service is a `PushProvider`: FCM (HTTP v1,
authorised with a service account's signed JWT exchanged for an OAuth2 token) serves Android
and web devices, APNs (HTTP/2, a provider token signed with the team's key) iOS ones. A
notification is pushed by a task (notifications/tasks.py) to each of the user's devices: a
token the service reports gone (FCM 404/UNREGISTERED, APNs 410/BadDeviceToken) removes the
device, a busy or failing service (429, 5xx, unreachable) is retried with backoff by the task.

Hand-written over the Firebase Admin SDK and an APNs library: the SDK is synchronous and
pulls in google-auth's transport stack, the maintained APNs clients (aioapns) bring their own
HTTP/2 stack; both would hide the answers this module acts on, which are a few lines each."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import structlog
from sqlalchemy import delete

from steward.jobs.base import TransientError
from steward.notifications import devices
from steward.notifications.models import Device, Notification
from steward.platform.resources import Resources, provide
from steward.settings import Settings

log = structlog.get_logger(__name__)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass(frozen=True, slots=True)
class PushMessage:
    title: str
    body: str
    data: dict[str, str]


class PushProvider(Protocol):
    platforms: frozenset[str]

    async def send(self, token: str, message: PushMessage) -> bool:
        """True when delivered to the service; False when the token is gone (forget the
        device). Raises TransientError when trying again later may work."""
        ...


class Fcm:
    """Firebase Cloud Messaging, HTTP v1."""

    platforms = frozenset({"android", "web"})

    def __init__(self, account: dict[str, Any], base_url: str, client: httpx.AsyncClient) -> None:
        self._account = account
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._token: tuple[str, float] | None = None  # (access token, monotonic expiry)

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient) -> Fcm | None:
        if settings.fcm_service_account_file is None:
            return None
        account = json.loads(Path(settings.fcm_service_account_file).read_text())
        return cls(account, settings.fcm_base_url, client)

    async def _access_token(self) -> str:
        if self._token is not None and self._token[1] > time.monotonic():
            return self._token[0]
        now = int(time.time())
        assertion = jwt.encode(
            {"iss": self._account["client_email"], "scope": FCM_SCOPE,
             "aud": self._account["token_uri"], "iat": now, "exp": now + 3600},
            self._account["private_key"], algorithm="RS256",
            headers={"kid": self._account.get("private_key_id", "")},
        )  # fmt: skip
        try:
            answer = await self._client.post(self._account["token_uri"], data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            })  # fmt: skip
        except httpx.TransportError as exc:
            raise TransientError(f"FCM token endpoint unreachable: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise TransientError(f"FCM token endpoint answered {answer.status_code}")
        body = answer.json()
        lifetime = float(body.get("expires_in", 3600))
        self._token = (body["access_token"], time.monotonic() + max(60.0, lifetime - 60))
        return str(body["access_token"])

    async def send(self, token: str, message: PushMessage) -> bool:
        url = f"{self._base_url}/v1/projects/{self._account['project_id']}/messages:send"
        payload = {"message": {"token": token,
                               "notification": {"title": message.title, "body": message.body},
                               "data": message.data}}  # fmt: skip
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {await self._access_token()}"}
            try:
                answer = await self._client.post(url, json=payload, headers=headers)
            except httpx.TransportError as exc:
                raise TransientError(f"FCM unreachable: {type(exc).__name__}") from exc
            if answer.status_code == 401 and attempt == 0:
                self._token = None  # revoked or expired early: one new token, one more try
                continue
            break
        if answer.status_code == 200:
            return True
        status = _fcm_error(answer)
        if answer.status_code == 404 or status in ("UNREGISTERED", "NOT_FOUND"):
            return False
        if answer.status_code == 400 and status == "INVALID_ARGUMENT":
            return False  # a malformed token: no retry will make it valid
        if answer.status_code == 429 or answer.status_code >= 500:
            raise TransientError(f"FCM answered {answer.status_code}")
        raise RuntimeError(f"FCM refused the message ({answer.status_code} {status})")


def _fcm_error(answer: httpx.Response) -> str | None:
    try:
        error = answer.json().get("error", {})
    except ValueError:
        return None
    for detail in error.get("details", []):
        code = detail.get("errorCode")
        if code:
            return str(code)
    status = error.get("status")
    return str(status) if status else None


class Apns:
    """Apple Push Notification service: HTTP/2, authorised by a provider token (an ES256 JWT
    from the team's auth key), renewed every 50 minutes (Apple refuses one older than an
    hour) and once when Apple calls it expired."""

    platforms = frozenset({"ios"})
    _TOKEN_LIFETIME_S = 50 * 60

    def __init__(self, *, key: str, key_id: str, team_id: str, topic: str, base_url: str,
                 client: httpx.AsyncClient) -> None:  # fmt: skip
        self._key, self._key_id, self._team_id, self._topic = key, key_id, team_id, topic
        self._base_url = base_url.rstrip("/")
        self._client = client
        self._token: tuple[str, float] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient) -> Apns | None:
        s = settings
        if not (s.apns_key_file and s.apns_key_id and s.apns_team_id and s.apns_topic):
            return None
        return cls(key=Path(s.apns_key_file).read_text(), key_id=s.apns_key_id,
                   team_id=s.apns_team_id, topic=s.apns_topic, base_url=s.apns_base_url,
                   client=client)  # fmt: skip

    def _provider_token(self) -> str:
        if self._token is None or self._token[1] <= time.monotonic():
            token = jwt.encode({"iss": self._team_id, "iat": int(time.time())}, self._key,
                               algorithm="ES256", headers={"kid": self._key_id})  # fmt: skip
            self._token = (token, time.monotonic() + self._TOKEN_LIFETIME_S)
        return self._token[0]

    async def send(self, token: str, message: PushMessage) -> bool:
        url = f"{self._base_url}/3/device/{token}"
        payload = {"aps": {"alert": {"title": message.title, "body": message.body},
                           "sound": "default"}, **message.data}  # fmt: skip
        for attempt in range(2):
            headers = {"authorization": f"bearer {self._provider_token()}",
                       "apns-topic": self._topic, "apns-push-type": "alert",
                       "apns-priority": "10"}  # fmt: skip
            try:
                answer = await self._client.post(url, json=payload, headers=headers)
            except httpx.TransportError as exc:
                raise TransientError(f"APNs unreachable: {type(exc).__name__}") from exc
            reason = _apns_reason(answer)
            if answer.status_code == 403 and reason == "ExpiredProviderToken" and attempt == 0:
                self._token = None
                continue
            break
        if answer.status_code == 200:
            return True
        if answer.status_code == 410 or reason in ("BadDeviceToken", "Unregistered",
                                                   "DeviceTokenNotForTopic"):  # fmt: skip
            return False
        if answer.status_code == 429 or answer.status_code >= 500:
            raise TransientError(f"APNs answered {answer.status_code} {reason}")
        raise RuntimeError(f"APNs refused the notification ({answer.status_code} {reason})")


def _apns_reason(answer: httpx.Response) -> str | None:
    try:
        reason = answer.json().get("reason")
    except ValueError:
        return None
    return str(reason) if reason else None


class PushProviders:
    """The configured provider of each platform, sharing one HTTP client (a resources part)."""

    def __init__(self, settings: Settings) -> None:
        # HTTP/2 where the service speaks it (APNs requires it; FCM takes either).
        self._client = httpx.AsyncClient(http2=True, timeout=httpx.Timeout(10.0, connect=5.0))
        self._by_platform: dict[str, PushProvider] = {}
        for provider in (Fcm.from_settings(settings, self._client),
                         Apns.from_settings(settings, self._client)):  # fmt: skip
            if provider is not None:
                self._by_platform.update(dict.fromkeys(provider.platforms, provider))

    def get(self, platform: str) -> PushProvider | None:
        return self._by_platform.get(platform)

    async def aclose(self) -> None:
        await self._client.aclose()


provide(PushProviders, lambda resources: PushProviders(resources.settings))


async def push_to_device(resources: Resources, notification_id: uuid.UUID,
                         device_id: uuid.UUID) -> bool:  # fmt: skip
    """Push one notification to one device (a task per device: a retry never repeats a push
    another device already got). A token the service reports gone removes the device."""
    async with resources.transaction() as session:
        notification = await session.get(Notification, notification_id)
        device = await session.get(Device, device_id)
        quiet = await devices.quiet_hours(session, user_id=device.user_id) if device else None
    if notification is None or device is None or device.user_id != notification.user_id:
        return False  # deleted, or the token moved to another account meanwhile
    if devices.is_quiet(quiet, datetime.now(UTC)):
        log.info("push.quiet_hours", device_id=str(device.id))
        return False  # the notification is in the app's list and live events all the same
    provider = resources.get(PushProviders).get(device.platform)
    if provider is None:
        return False
    message = PushMessage(title=notification.title, body=notification.body or "Reminder",
                          data={"notification_id": str(notification.id),
                                "kind": notification.kind})  # fmt: skip
    if await provider.send(device.token, message):
        return True
    async with resources.transaction() as session:
        await session.execute(
            delete(Device).where(Device.id == device.id, Device.token == device.token)
        )
    log.info("push.device_forgotten", device_id=str(device.id), platform=device.platform)
    return False
