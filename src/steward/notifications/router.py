"""Live events to a user's devices: `WS /api/v1/realtime` and its SSE twin
`GET /api/v1/realtime/events`. Both carry the user's todo changes (and, later,
notifications) as `{type, ...}` objects, with heartbeats and a maximum lifetime."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect, status

from steward.accounts import service as accounts
from steward.accounts.deps import (
    CurrentUser,
    CurrentUserId,
    PasswordHashing,
    ProfileWriter,
    SessionUser,
)
from steward.accounts.limits import RateLimited, limit_email
from steward.accounts.schemas import (
    EmailQueued,
    PasswordResetConfirm,
    PasswordResetRequest,
    UserRead,
    VerifyEmail,
)
from steward.accounts.sockets import accept_socket
from steward.notifications import account_mail, devices, service, webhooks
from steward.notifications.hub import Hub, Subscription
from steward.notifications.schemas import (
    DeviceRead,
    DeviceRegister,
    NotificationRead,
    QuietHoursSet,
    ReadAll,
    WebhookCreated,
    WebhookRead,
    WebhookSet,
)
from steward.platform import pubsub
from steward.platform.api import API_V1
from steward.platform.deps import AppSettings, Session, resources_of
from steward.platform.errors import Conflict, NotFound
from steward.platform.pagination import Cursor, Limit, Page
from steward.platform.pubsub import user_channel
from steward.platform.sockets import CLOSE_SLOW_CONSUMER
from steward.platform.streaming import open_socket, sse_event, sse_response
from steward.todos.deps import TodosReader

log = structlog.get_logger(__name__)

router = APIRouter(prefix=f"{API_V1}/realtime", tags=["realtime"])
devices_routes = APIRouter(prefix=f"{API_V1}/devices", tags=["devices"],
                           dependencies=[RateLimited])  # fmt: skip
# Anyone may call these; a bearer token sent anyway is checked (for its rate limit).
_STALE_BEARER: dict[int | str, dict[str, Any]] = {
    401: {"description": "a bearer token was sent and is not valid (none is needed)"}
}
# The account lifecycle by email (verification, password reset): this domain sends email.
account_mail_routes = APIRouter(prefix=f"{API_V1}/auth", tags=["auth"])
notifications = APIRouter(
    prefix=f"{API_V1}/notifications", tags=["notifications"], dependencies=[RateLimited]
)


@notifications.get("", summary="List own notifications, newest first (scope todos:read)")
async def list_notifications(
    _: TodosReader,
    user_id: CurrentUserId,
    session: Session,
    unread: bool | None = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[NotificationRead]:
    rows, next_cursor = await service.list_for(
        session, user_id=user_id, unread=unread, limit=limit, cursor=cursor
    )
    return Page(items=[NotificationRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@notifications.post("/read-all", summary="Mark every own notification read (scope todos:read)")
async def read_all(_: TodosReader, user_id: CurrentUserId, session: Session) -> ReadAll:
    return ReadAll(marked=await service.mark_all_read(session, user_id=user_id))


@notifications.post(
    "/{notification_id}/read",
    summary="Mark an own notification read (scope todos:read)",
    responses={404: {"description": "no such notification of yours"}},
)
async def read_one(
    notification_id: uuid.UUID, _: TodosReader, user_id: CurrentUserId, session: Session
) -> NotificationRead:
    notification = await service.mark_read(
        session, user_id=user_id, notification_id=notification_id
    )
    return NotificationRead.model_validate(notification)


@notifications.put(
    "/webhook", status_code=201,
    summary="Set (or replace) own webhook; answers its secret once (signed-in user, or scope "
    "profile:write)",
)  # fmt: skip
async def set_webhook(body: WebhookSet, user: ProfileWriter, session: Session,
                      settings: AppSettings) -> WebhookCreated:  # fmt: skip
    webhook = await webhooks.set_webhook(
        session, user_id=user.id, url=str(body.url), settings=settings
    )
    return WebhookCreated.model_validate(webhook)


_NO_WEBHOOK: dict[int | str, dict[str, Any]] = {404: {"description": "no webhook is set"}}


@notifications.get("/webhook", summary="Own webhook (without its secret)", responses=_NO_WEBHOOK)
async def get_webhook(user: CurrentUser, session: Session) -> WebhookRead:
    return WebhookRead.model_validate(await webhooks.get_webhook(session, user_id=user.id))


@notifications.delete(
    "/webhook", status_code=204, responses=_NO_WEBHOOK,
    summary="Remove own webhook (signed-in user, or scope profile:write)",
)  # fmt: skip
async def delete_webhook(user: ProfileWriter, session: Session) -> None:
    await webhooks.remove_webhook(session, user_id=user.id)


@router.websocket("")
async def realtime_socket(websocket: WebSocket) -> None:
    """Todo changes and notifications, live (scope todos:read). Authenticate with
    `Authorization: Bearer`, `x-api-key`, or `?access_token=` (browsers). Every event has an
    `event_id`; reconnect with `?last_event_id=` to receive what was missed first (or a
    `resync` event when it is gone). Close codes: 4401 unauthenticated, 4403 missing scope,
    4408 too slow to keep up, 4000 lifetime reached."""
    principal = await accept_socket(websocket, "todos:read")
    if principal is None:
        return
    resources = resources_of(websocket)
    settings = resources.settings
    subscription = await resources.get(Hub).subscribe(str(principal.user_id))
    # The client may talk (pings); reading is also how a disconnect is noticed.
    listener = asyncio.create_task(_drain(websocket, subscription))
    try:
        async with open_socket(websocket, transport="websocket",
                               lifetime_s=settings.realtime_max_lifetime_s) as socket:  # fmt: skip
            await socket.send({"type": "ready", "user_id": str(principal.user_id)})
            seen = websocket.query_params.get("last_event_id")
            gate = _Gate(seen)
            if seen:
                for missed in await _catch_up(resources, str(principal.user_id), seen, gate):
                    await socket.send(missed)
            while (remaining := socket.remaining()) > 0:
                # One wait per event, not a task: the listener wakes it when the client goes.
                published = await subscription.next(min(settings.realtime_heartbeat_s, remaining))
                if listener.done():  # the client went away
                    return
                if subscription.dropped:
                    await socket.close(CLOSE_SLOW_CONSUMER, "too slow; reconnect")
                    return
                if published is None:
                    await socket.send({"type": "ping"})
                elif gate.passes(published.event):
                    await socket.send_text(published.text)
            await socket.close_at_lifetime()
    finally:
        listener.cancel()
        await subscription.close()


async def _drain(websocket: WebSocket, subscription: Subscription) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        subscription.wake()


@router.get(
    "/events",
    summary="Todo changes and notifications as server-sent events (scope todos:read); send "
    "`Last-Event-ID` to receive what was missed first",
    dependencies=[RateLimited],
    responses={200: {"content": {"text/event-stream": {}}, "description": "the user's events"}},
)
async def realtime_events(request: Request, _: TodosReader, user_id: CurrentUserId) -> Response:
    # Authentication and the scope check are dependencies: they answer 401/403 before the
    # first event (inside the generator, an error would arrive as an empty 200 stream).
    settings = resources_of(request).settings
    return sse_response(
        _events(request, str(user_id)), transport="sse",
        lifetime_s=settings.realtime_max_lifetime_s, ping_s=settings.realtime_heartbeat_s,
    )  # fmt: skip


class _Gate:
    """After a catch-up, live events already replayed (or older) are not sent again."""

    def __init__(self, seen: str | None) -> None:
        self.newest = seen

    def passes(self, event: dict[str, Any]) -> bool:
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or self.newest is None:
            return True
        if not pubsub.is_newer(event_id, self.newest):
            return False
        self.newest = event_id
        return True


async def _catch_up(resources: Any, user_id: str, seen: str, gate: _Gate) -> list[dict[str, Any]]:
    """What the device missed since `seen` (it is subscribed already: nothing falls between
    this read and the live events, which the gate de-duplicates), or a `resync` event."""
    settings = resources.settings
    events, gone = await pubsub.missed(resources.redis, user_channel(user_id), seen,
                                       limit=settings.realtime_catchup_max)  # fmt: skip
    if gone:
        gate.newest = None
        detail = "events since your last one are no longer kept: reload your data"
        return [{"type": "resync", "detail": detail}]
    return [event for event in events if gate.passes(event)]


def _sse(event: dict[str, Any]) -> bytes:
    event_id = event.get("event_id")
    return sse_event(str(event.get("type", "message")), event,
                     event_id=event_id if isinstance(event_id, str) else None)  # fmt: skip


async def _events(request: Request, user_id: str) -> AsyncIterator[bytes]:
    resources = resources_of(request)
    settings = resources.settings
    subscription = await resources.get(Hub).subscribe(user_id)
    deadline = time.monotonic() + settings.realtime_max_lifetime_s
    seen = request.headers.get("last-event-id")
    gate = _Gate(seen)
    try:
        yield sse_event("ready", {"user_id": user_id})
        if seen:
            for missed in await _catch_up(resources, user_id, seen, gate):
                yield _sse(missed)
        while (remaining := deadline - time.monotonic()) > 0:
            published = await subscription.next(min(settings.realtime_heartbeat_s, remaining))
            if subscription.dropped:
                yield sse_event("error", {"detail": "too slow; reconnect"})
                return
            if published is not None and gate.passes(published.event):
                yield _sse(published.event)
    finally:
        await subscription.close()


@account_mail_routes.post(
    "/verify-email",
    summary="Confirm an email address with the token of the link sent to it (anyone)",
    dependencies=[RateLimited],
    responses={**_STALE_BEARER, 422: {"description": "the token is invalid, used or expired"}},
)
async def verify_email(body: VerifyEmail, session: Session, settings: AppSettings) -> UserRead:
    user = await account_mail.verify_email(session, token=body.token, settings=settings)
    return UserRead.model_validate(user)


@account_mail_routes.post(
    "/verify-email/resend",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send the verification email again (signed-in user; RATE_LIMIT_EMAIL per account)",
    dependencies=[RateLimited],
    responses={401: {"description": "not signed in"},
               409: {"description": "the address is already verified"},
               429: {"description": "too many emails for this account"}},
)  # fmt: skip
async def resend_verification(
    request: Request, user: SessionUser, session: Session, settings: AppSettings
) -> EmailQueued:
    stored = await accounts.get(session, user.id)
    assert stored is not None  # a live session's user
    if stored.email_verified:
        raise Conflict("the email address is already verified")
    await limit_email(request, str(user.id))
    await account_mail.request_verification(session, user=stored, settings=settings)
    return EmailQueued()


@account_mail_routes.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Email a password reset link, if an account has this address (anyone; the "
    "answer is the same either way)",
    dependencies=[RateLimited],
    responses={**_STALE_BEARER, 429: {"description": "too many emails for this address"}},
)
async def password_reset(
    body: PasswordResetRequest, request: Request, session: Session
) -> EmailQueued:
    await limit_email(request, body.email)
    await account_mail.request_password_reset(session, email=body.email)
    return EmailQueued()


@account_mail_routes.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with the token of the reset link; signs out every device "
    "(holder of the token)",
    dependencies=[RateLimited],
    responses={**_STALE_BEARER,
               422: {"description": "the token is invalid, used or expired, or the password "
                                    "is too weak"}},
)  # fmt: skip
async def password_reset_confirm(
    body: PasswordResetConfirm, session: Session, passwords: PasswordHashing,
    settings: AppSettings,
) -> Response:  # fmt: skip
    await account_mail.reset_password(
        session, token=body.token, new_password=body.new_password.get_secret_value(),
        passwords=passwords, settings=settings,
    )  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@devices_routes.post(
    "", status_code=status.HTTP_201_CREATED,
    summary="Register this device's push token (scope profile:write or a signed-in user); a "
    "token registered by another account moves to this one",
    responses={401: {"description": "not signed in"}, 403: {"description": "a narrow API key"}},
)  # fmt: skip
async def register_device(
    body: DeviceRegister, user: ProfileWriter, session: Session
) -> DeviceRead:
    return DeviceRead.model_validate(await devices.register(session, user_id=user.id, device=body))


@devices_routes.get(
    "/quiet-hours", summary="Own quiet hours: no push between them (any user)",
    responses={401: {"description": "not signed in"}, 404: {"description": "none are set"}},
)  # fmt: skip
async def get_quiet_hours(user: CurrentUser, session: Session) -> QuietHoursSet:
    hours = await devices.quiet_hours(session, user_id=user.id)
    if hours is None:
        raise NotFound("no quiet hours are set")
    return QuietHoursSet.model_validate(hours)


@devices_routes.put(
    "/quiet-hours", summary="Set own quiet hours (scope profile:write or a signed-in user)",
    responses={401: {"description": "not signed in"}, 403: {"description": "a narrow API key"}},
)  # fmt: skip
async def put_quiet_hours(
    body: QuietHoursSet, user: ProfileWriter, session: Session
) -> QuietHoursSet:
    hours = await devices.set_quiet_hours(session, user_id=user.id, hours=body)
    return QuietHoursSet.model_validate(hours)


@devices_routes.delete(
    "/quiet-hours", status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove own quiet hours (scope profile:write or a signed-in user)",
    responses={401: {"description": "not signed in"}, 403: {"description": "a narrow API key"}},
)  # fmt: skip
async def delete_quiet_hours(user: ProfileWriter, session: Session) -> Response:
    await devices.clear_quiet_hours(session, user_id=user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@devices_routes.get("", summary="Own devices (any user)",
                    responses={401: {"description": "not signed in"}})  # fmt: skip
async def list_devices(user: CurrentUser, session: Session) -> list[DeviceRead]:
    return [DeviceRead.model_validate(d) for d in await devices.list_own(session, user_id=user.id)]


@devices_routes.delete(
    "/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
    summary="Forget a device (scope profile:write or a signed-in user)",
    responses={401: {"description": "not signed in"}, 403: {"description": "a narrow API key"},
               404: {"description": "no such device of yours"}},
)  # fmt: skip
async def delete_device(device_id: uuid.UUID, user: ProfileWriter, session: Session) -> Response:
    await devices.remove(session, user_id=user.id, device_id=device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
