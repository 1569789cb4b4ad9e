"""Real HTTP servers for tests that need real sockets (WebSocket, streaming SSE)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from steward.app import create_app
from steward.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LiveServer(str):
    """The base URL, carrying the served app (for looking at its resources)."""

    app: FastAPI


@asynccontextmanager
async def serve_asgi(app: ASGIApp, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve any ASGI app with uvicorn on a free port, in this event loop; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan=lifespan,
        ws="websockets-sansio",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """Serve `create_app(settings)` with uvicorn on a free port; yields the base URL."""
    app = create_app(settings)
    async with serve_asgi(app, lifespan="on") as base:
        url = LiveServer(base)
        url.app = app
        yield url
