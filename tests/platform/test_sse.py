"""The assistant's SSE response, driven through its ASGI interface: it streams and ends, pings
an idle client, stops the body when the client leaves or the server shuts down, and a
normal end leaves nothing for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import AppStatus

from steward.platform.sse import EventStream

SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": []}


class Peer:
    """An ASGI server's side of one request: records what is sent; `receive()` answers
    `http.disconnect` once the response is complete or the client has left."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.streaming = asyncio.Event()  # a first body chunk was sent

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.streaming.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.gone.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def _events(n: int, delay_s: float = 0.0) -> AsyncIterator[bytes]:
    for i in range(n):
        if delay_s:
            await asyncio.sleep(delay_s)
        yield b"event: token\r\ndata: %d\r\n\r\n" % i


async def test_streams_every_event_then_completes() -> None:
    peer = Peer()
    await EventStream(_events(3), ping=15)(SCOPE, peer.receive, peer.send)
    assert peer.sent[0]["type"] == "http.response.start"
    assert peer.sent[0]["status"] == 200
    assert peer.body == b"".join([b"event: token\r\ndata: %d\r\n\r\n" % i for i in range(3)])
    assert peer.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_normal_end_leaves_no_reference_cycles() -> None:
    # sse-starlette's own task group leaves a hundred or more objects per response in
    # cycles (cancelled tasks' exceptions and frames); this response cancels nothing.
    await EventStream(_events(2), ping=15)(SCOPE, Peer().receive, Peer().send)  # warm imports
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            peer = Peer()
            await EventStream(_events(3), ping=15)(SCOPE, peer.receive, peer.send)
            await asyncio.sleep(0)  # the disconnect watch returns
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 20, f"{unreachable} objects in cycles after 20 responses"


async def test_idle_stream_is_pinged() -> None:
    peer = Peer()
    await EventStream(_events(1, delay_s=0.35), ping=0.1)(SCOPE, peer.receive, peer.send)
    pings = [m for m in peer.sent if m.get("body", b"").startswith(b": ping")]
    assert len(pings) >= 2
    assert peer.body.endswith(b"data: 0\r\n\r\n")


async def test_client_leaving_stops_the_body_quietly() -> None:
    peer = Peer()
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\r\n\r\n"
            await asyncio.sleep(3600)
            yield b"data: never\r\n\r\n"
        finally:
            stopped.set()

    response = asyncio.create_task(EventStream(endless(), ping=15)(SCOPE, peer.receive, peer.send))
    await asyncio.wait_for(peer.streaming.wait(), 2)
    peer.gone.set()  # the client disconnects
    await asyncio.wait_for(response, 2)  # returns, does not raise
    assert stopped.is_set()
    assert b"never" not in peer.body


async def test_other_cancellations_propagate() -> None:
    peer = Peer()
    response = asyncio.create_task(
        EventStream(_events(1, delay_s=3600), ping=15)(SCOPE, peer.receive, peer.send)
    )
    await asyncio.sleep(0.05)
    response.cancel()
    await asyncio.gather(response, return_exceptions=True)
    assert response.cancelled()


async def test_server_shutdown_ends_the_stream() -> None:
    peer = Peer()
    response = asyncio.create_task(
        EventStream(_events(1, delay_s=3600), ping=15)(SCOPE, peer.receive, peer.send)
    )
    await asyncio.sleep(0.05)
    AppStatus.should_exit = True  # what sse-starlette's hook on uvicorn's exit sets
    try:
        await asyncio.wait_for(response, 3)  # its watcher polls twice a second
    finally:
        AppStatus.should_exit = False
    assert not response.cancelled()
    assert peer.body == b""
