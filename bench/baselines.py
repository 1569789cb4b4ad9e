"""The bare apps every Steward figure is compared with, served by the same uvicorn."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

_BODY = b'{"status":"ok"}'


async def raw_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """The floor: an ASGI callable that answers every request with a fixed body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": _BODY})


bare_fastapi = FastAPI()


@bare_fastapi.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
