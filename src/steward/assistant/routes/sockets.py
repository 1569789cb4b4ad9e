"""The assistant over one WebSocket: send messages and cancels, receive every run's events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from steward.accounts.authentication import Principal
from steward.accounts.limits import limit
from steward.accounts.sockets import accept_socket
from steward.assistant import runs
from steward.assistant.deps import sender_of
from steward.assistant.schemas import MessageCreate
from steward.platform.api import API_V1
from steward.platform.deps import resources_of
from steward.platform.errors import (
    StewardError,
    TooManyRequests,
    UnprocessableContent,
    problem_body,
)
from steward.platform.sockets import CLOSE_LIMITED
from steward.platform.streaming import Socket, open_socket

# Sockets authenticate (and are limited) in the handler: HTTP dependencies do not apply.
router = APIRouter(prefix=f"{API_V1}/assistant", tags=["assistant"])


@router.websocket("/ws")
async def assistant_socket(websocket: WebSocket) -> None:
    """Chat over one socket (scope assistant). Send `{"type": "message", "conversation_id",
    "content"}` or `{"type": "cancel", "run_id"}`; receive `{"type": <event>, "id", "data"}`
    with the SSE events' names and data, or `{"type": "error", "data": <problem>}`. Close
    codes: 4401 unauthenticated, 4403 missing scope, 4429 rate limited, 4000 lifetime reached."""
    principal = await accept_socket(websocket, "assistant")
    if principal is None:
        return
    resources = resources_of(websocket)
    active: runs.ActiveRuns = websocket.app.state.active_runs
    mine: dict[uuid.UUID, runs.LiveRun] = {}
    forwarders: set[asyncio.Task[None]] = set()

    async def forward(socket: Socket, live: runs.LiveRun) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            async for entry_id, event in live.events():
                await socket.send({"type": event.event, "id": entry_id, "data": event.data})
        mine.pop(live.run_id, None)

    lifetime = resources.settings.realtime_max_lifetime_s
    try:
        async with open_socket(websocket, transport="assistant-ws", lifetime_s=lifetime) as socket:
            await socket.send({"type": "ready", "user_id": str(principal.user_id)})
            while (raw := await socket.receive()) is not None:
                try:
                    live = await _on_message(websocket, active, principal, mine, raw)
                except TooManyRequests as exc:
                    await socket.close(CLOSE_LIMITED, exc.detail)
                    return
                except StewardError as exc:
                    problem = problem_body(
                        exc.status, slug=exc.slug, detail=exc.detail,
                        instance=websocket.url.path, request_id=None,
                    )  # fmt: skip
                    await socket.send({"type": "error", "data": problem})
                    continue
                if live is not None:
                    mine[live.run_id] = live
                    task = asyncio.create_task(forward(socket, live))
                    forwarders.add(task)
                    task.add_done_callback(forwarders.discard)
    finally:
        for live in list(mine.values()):
            live.cancel()
        for task in list(forwarders):
            task.cancel()


async def _on_message(
    websocket: WebSocket,
    active: runs.ActiveRuns,
    principal: Principal,
    mine: dict[uuid.UUID, runs.LiveRun],
    raw: str,
) -> runs.LiveRun | None:
    try:
        message: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UnprocessableContent("messages are JSON objects") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "cancel":
        try:
            run_id = uuid.UUID(str(message.get("run_id")))
        except ValueError:
            raise UnprocessableContent("run_id is not a UUID") from None
        live = mine.get(run_id)
        if live is None:
            raise UnprocessableContent("no run of this connection has that id")
        live.cancel()
        return None
    if kind != "message":
        raise UnprocessableContent('type must be "message" or "cancel"')
    try:
        body = MessageCreate.model_validate(message)
        conversation_id = uuid.UUID(str(message.get("conversation_id")))
    except (ValidationError, ValueError):
        raise UnprocessableContent(
            "a message needs conversation_id (UUID) and content (1-32000 chars)"
        ) from None
    resources = resources_of(websocket)
    await limit(websocket, resources.policies.assistant, principal)
    return await runs.start(
        resources, active, sender=sender_of(principal), conversation_id=conversation_id,
        message=body,
    )  # fmt: skip
