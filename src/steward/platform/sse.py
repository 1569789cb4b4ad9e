"""The SSE response of the assistant's streams: sse-starlette's, served without its task group.

sse-starlette runs each response as four tasks (the stream, pings, a shutdown watch and a
disconnect watch) and cancels the others when one ends. Every cancellation leaves an
exception whose traceback holds the response's frames (and through them the request's
whole cycle) in reference cycles: a hundred objects or more per response that only the
garbage collector frees. With a hundred streams open, the collector's pauses that this
garbage brought on were the tail of time to first token (bench/RESULTS.md). Here a normal
end cancels nothing:

- the body is sent from the request's own task;
- pings come from a timer, which sends one only if the stream is still open;
- the disconnect watch is one task that returns by itself: an ASGI server answers
  `receive()` with `http.disconnect` once the response is complete (uvicorn does, and so
  does httpx's test transport); it is cancelled only where a server does not;
- server shutdown reaches the stream through sse-starlette's own watcher, as it would with
  sse-starlette's task group.

A client that disconnects cancels the request's task: the body generator sees the
cancellation (a live run's reader then cancels the run) and the response ends quietly, as
sse-starlette's would. A server shutting down (SIGTERM) first lets a stream that has a
`farewell` go on for `grace_s`, so that most finish; one still open then receives the
farewell event (where to resume) and is cancelled the same way. Anything else (HEAD,
websocket scopes, a send timeout) is sse-starlette's own path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette import sse as _sse_starlette
from sse_starlette.event import ensure_bytes
from starlette.types import Message, Receive, Scope, Send


class _Stop:
    """Ends one stream early: registered with sse-starlette's shutdown watcher (which calls
    `set()`: the server is shutting down), and called by the disconnect watch (`cancel()`)."""

    __slots__ = ("_on_shutdown", "_task", "fired")

    def __init__(
        self, task: asyncio.Task[Any], on_shutdown: Callable[[], None] | None = None
    ) -> None:
        self._task = task
        self._on_shutdown = on_shutdown
        self.fired = False

    def set(self) -> None:
        if self._on_shutdown is not None:
            on_shutdown, self._on_shutdown = self._on_shutdown, None
            on_shutdown()  # the stream's grace begins; it calls cancel() when it ends
        else:
            self.cancel()

    def cancel(self) -> None:
        if not self.fired:
            self.fired = True
            self._task.cancel()


def stop_streams() -> None:
    """Tell every stream of this thread's loop that the server is stopping, now (the server's
    own shutdown calls this; sse-starlette's watcher, which polls for it, may come later)."""
    for stop in list(_sse_starlette._get_shutdown_state().events):
        stop.set()


def shutting_down() -> bool:
    """Whether this server process has been told to stop (SIGTERM under uvicorn): read from
    the same place sse-starlette's watcher reads it."""
    if _sse_starlette.AppStatus.should_exit:
        return True
    server = _sse_starlette._get_uvicorn_server()  # type: ignore[no-untyped-call]
    return bool(server is not None and server.should_exit)


class EventStream(EventSourceResponse):
    """An SSE response (see the module's docstring for how it differs from its base).

    `farewell`: the last event a stream still open `grace_s` after the server began to shut
    down receives (say where to resume); without one, shutdown ends the stream at once."""

    def __init__(
        self, *args: Any, farewell: bytes | None = None, grace_s: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.farewell = farewell
        self.grace_s = grace_s
        self._grace_timer: asyncio.TimerHandle | None = None

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # No cancel scope per send when there is no send timeout (there is none here):
        # entering and leaving one for every token stood out in profiles under load.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if (
            scope["type"] != "http"
            or scope["method"].upper() == "HEAD"
            or self.send_timeout is not None
            or self.data_sender_callable is not None
            or task is None
        ):
            await super().__call__(scope, receive, send)
            return
        if _sse_starlette.AppStatus.should_exit:
            return  # the server is shutting down: sse-starlette would not start either
        loop = asyncio.get_running_loop()
        stop = _Stop(task)
        if self.farewell is not None and self.grace_s > 0:

            def shutting_down() -> None:
                self._grace_timer = loop.call_later(
                    self.grace_s, lambda: loop.create_task(self._say_farewell(send, stop))
                )

            stop = _Stop(task, shutting_down)
        # sse-starlette's shutdown registry is internal to it (its version is pinned in
        # uv.lock, and tests/platform/test_sse.py checks that a shutdown ends a stream).
        shutdown = _sse_starlette._get_shutdown_state()
        _sse_starlette._ensure_watcher_started_on_this_loop()
        shutdown.events.add(stop)  # type: ignore[arg-type]  # it only calls set()
        listener = loop.create_task(self._watch_disconnect(receive, stop))
        self._ping_timer: asyncio.TimerHandle | None = None
        if self.ping_interval > 0:
            self._ping_timer = loop.call_later(self.ping_interval, self._ping_due, send, loop)
        try:
            await self._stream_response(send)
        except asyncio.CancelledError:
            # Our own cancel (disconnect or shutdown) ends the response quietly; any other
            # cancellation of the request's task goes on.
            if not stop.fired or task.uncancel() > 0:
                raise
            await self._complete(send)
        except OSError:
            pass  # a server that raises on a send to a client that left (ASGI 2.4)
        finally:
            self.active = False
            shutdown.events.discard(stop)
            stop._on_shutdown = None  # it refers to `stop` itself: no cycle left behind
            if self._grace_timer is not None:
                self._grace_timer.cancel()
                self._grace_timer = None
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = None  # it holds a method of this response: no cycle
            if not listener.done():
                listener.cancel()
        if self.background is not None:
            await self.background()

    async def _watch_disconnect(self, receive: Receive, stop: _Stop) -> None:
        while self.active:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.active:  # not the answer that follows a complete response
                    self.active = False
                    stop.cancel()
                return

    async def _complete(self, send: Send) -> None:
        """End a response that the server's shutdown stopped with its last (empty) chunk: a
        stream cut short reads as an error to the client and to a proxy in front (nginx
        then cuts its own response to the client short too). After a disconnect, nothing."""
        async with self._send_lock:
            if self.active:
                self.active = False
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _say_farewell(self, send: Send, stop: _Stop) -> None:
        assert self.farewell is not None
        async with self._send_lock:
            if self.active:
                self.active = False  # the response is complete: nothing else is sent
                with contextlib.suppress(OSError):
                    await send(
                        {"type": "http.response.body", "body": self.farewell, "more_body": False}
                    )
        stop.cancel()

    def _ping_due(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        if not self.active:
            return
        loop.create_task(self._send_ping(send))
        self._ping_timer = loop.call_later(self.ping_interval, self._ping_due, send, loop)

    async def _send_ping(self, send: Send) -> None:
        ping = (
            self.ping_message_factory()
            if self.ping_message_factory
            else ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep)
        )
        async with self._send_lock:
            if not self.active:
                return
            # A client that left: the disconnect watch ends the stream.
            with contextlib.suppress(OSError):
                body = ensure_bytes(ping, self.sep)
                await send({"type": "http.response.body", "body": body, "more_body": True})
