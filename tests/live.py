"""Real HTTP servers for tests that need real sockets (WebSocket, streaming SSE)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from steward.app import create_app
from steward.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


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


@dataclass
class ApiProcess:
    base: str
    port: int
    process: subprocess.Popen[bytes]


@contextmanager
def api_process(env: dict[str, str], log_path: Path) -> Iterator[ApiProcess]:
    """`steward api` as its own process (the environment over this one's), its output in
    `log_path`; yields once it answers /health, and stops it (SIGTERM, then SIGKILL) after."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "steward", "api", "--port", str(port)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, f"the API exited; see {log_path}"
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the API did not start within 60 s"
                time.sleep(0.1)
            yield ApiProcess(base=base, port=port, process=process)
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
