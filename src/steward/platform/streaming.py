"""The rules every stream follows, applied in one place: each SSE endpoint answers with
`sse_response` and each WebSocket endpoint runs inside `open_socket`, so the rules hold by
construction:

- authentication before the first byte: an SSE endpoint's credentials are dependencies
  (a refusal is a 401/403 problem, not an empty 200 stream); a socket is authenticated by
  `accounts.sockets.accept_socket` before `open_socket`;
- no database session held while streaming: streaming endpoints take no `Session`; what
  they read before the first event they read in a `resources.transaction()` of their own
  (tests/platform/test_streaming.py checks every route);
- a lifetime cap (`REALTIME_MAX_LIFETIME_S`): an SSE stream ends, a socket closes with 4000;
- a heartbeat: SSE comments every `ping_s`; sockets ping in their own protocol;
- proxies told not to buffer; every open stream counted in `steward_realtime_connections`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Gauge

from steward.platform.sockets import CLOSE_LIFETIME
from steward.platform.sse import EventStream

CONNECTIONS = Gauge(
    "steward_realtime_connections",
    "Open realtime connections on this process, by transport.",
    ["transport"],
    multiprocess_mode="livesum",
)
# Proxies must pass events through as they come (nginx buffers unless told not to).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING_S = 15.0


def sse_event(event: str | None, data: Any, *, event_id: str | None = None) -> bytes:
    """One event as SSE bytes, as sse-starlette's ServerSentEvent would encode it, without the
    intermediate object (this runs for every token); JSON from orjson has no line breaks."""
    head = b"id: %s\r\n" % event_id.encode() if event_id else b""
    name = b"event: %s\r\n" % event.encode() if event else b""
    return b"%s%sdata: %s\r\n\r\n" % (head, name, orjson.dumps(data))


def sse_response(
    source: AsyncIterator[bytes],
    *,
    transport: str,
    lifetime_s: float,
    ping_s: float = PING_S,
    farewell: bytes | None = None,
    grace_s: float = 0.0,
) -> EventStream:
    """Stream `source`'s chunks as SSE (platform/sse.py: pings, disconnects, shutdown with an
    optional `farewell` after `grace_s`), counted and cut at the lifetime cap."""
    return EventStream(
        _bounded(source, transport, lifetime_s), ping=ping_s, headers=HEADERS,
        farewell=farewell, grace_s=grace_s,
    )  # fmt: skip


async def _bounded(
    source: AsyncIterator[bytes], transport: str, lifetime_s: float
) -> AsyncIterator[bytes]:
    # Checked between chunks; sources that wait for events bound each wait by the time the
    # stream has left (`remaining`), so a quiet stream ends on time too.
    deadline = time.monotonic() + lifetime_s
    CONNECTIONS.labels(transport).inc()
    try:
        async for chunk in source:
            yield chunk
            if time.monotonic() >= deadline:
                return
    finally:
        CONNECTIONS.labels(transport).dec()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class Socket:
    """An accepted WebSocket inside `open_socket`: JSON out (one writer at a time), text in,
    and how long it may still live."""

    def __init__(self, websocket: WebSocket, lifetime_s: float) -> None:
        self.websocket = websocket
        self.deadline = time.monotonic() + lifetime_s
        self._send_lock = asyncio.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def send(self, payload: dict[str, Any]) -> None:
        await self.send_text(orjson.dumps(payload, default=str).decode())

    async def send_text(self, text: str) -> None:
        """A message that is JSON already."""
        async with self._send_lock:
            await self.websocket.send_text(text)

    async def receive(self) -> str | None:
        """The next text message, or None when the lifetime ran out first (then closed)."""
        remaining = self.remaining()
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    return await self.websocket.receive_text()
            except TimeoutError:
                pass
        await self.close_at_lifetime()
        return None

    async def close_at_lifetime(self) -> None:
        await self.close(CLOSE_LIFETIME, "maximum lifetime; reconnect")

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code=code, reason=reason[:100])


@asynccontextmanager
async def open_socket(
    websocket: WebSocket, *, transport: str, lifetime_s: float
) -> AsyncIterator[Socket]:
    """Serve an authenticated, accepted socket: counted while open; a client that leaves
    (or a send to one that has) ends the block quietly."""
    CONNECTIONS.labels(transport).inc()
    try:
        yield Socket(websocket, lifetime_s)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        CONNECTIONS.labels(transport).dec()
