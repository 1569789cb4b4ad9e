"""WebSocket authentication: credentials with the handshake (headers, or `?access_token=`
for browsers) or as the first message, then the scope; failures close with 4401/4403."""

from __future__ import annotations

import asyncio

from fastapi import WebSocket, WebSocketDisconnect
from starlette.requests import HTTPConnection

from steward.accounts.authentication import Principal, authenticate, credentials
from steward.platform.errors import StewardError, Unauthorized
from steward.platform.sockets import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED


async def authenticate_connection(connection: HTTPConnection) -> Principal:
    """The principal of a WebSocket (or any connection), outside FastAPI's dependency system:
    bearer token from the Authorization header or the `access_token` query parameter (a
    browser's WebSocket cannot send headers), or an `x-api-key` header. The database session
    it may need is closed again before this returns (as for every caller)."""
    principal = await authenticate(connection)
    if principal is None:
        raise Unauthorized("authentication required: send a bearer token or an x-api-key")
    return principal


# How long a socket that sent no credentials with its handshake has to send them.
SOCKET_AUTH_TIMEOUT_S = 10.0


async def _first_message_credentials(websocket: WebSocket) -> None:
    """Credentials sent as the first message, `{"type": "authenticate", "access_token":
    ...}` or `{..., "api_key": ...}`: a browser's WebSocket cannot send headers, and a token
    in the URL ends up in proxies' and servers' logs."""
    try:
        message = await asyncio.wait_for(websocket.receive_json(), SOCKET_AUTH_TIMEOUT_S)
    except (TimeoutError, ValueError, KeyError):
        message = None
    if not isinstance(message, dict) or message.get("type") != "authenticate":
        raise Unauthorized("send credentials: a header, or an `authenticate` first message")
    token, api_key = message.get("access_token"), message.get("api_key")
    sent = (
        token if isinstance(token, str) and token else None,
        api_key if isinstance(api_key, str) and api_key else None,
    )
    if sent == (None, None):
        raise Unauthorized("the `authenticate` message carries no access_token or api_key")
    await authenticate(websocket, sent)


async def accept_socket(websocket: WebSocket, scope: str) -> Principal | None:
    """Accept a WebSocket and authenticate it for `scope` (a user behind it); on failure,
    close it with 4401 or 4403 and return None. Accepting first matters: closing before
    accepting can only answer HTTP 403, and clients need the close code. Credentials come
    with the handshake (headers, or `?access_token=` for browsers) or as the first message."""
    await websocket.accept()
    try:
        if credentials(websocket) == (None, None):
            await _first_message_credentials(websocket)
        principal = await authenticate_connection(websocket)
    except WebSocketDisconnect:
        return None  # gone before it said who it is
    except StewardError as exc:
        await websocket.close(code=CLOSE_UNAUTHENTICATED, reason=exc.detail[:100])
        return None
    if scope not in principal.scopes or principal.user is None:
        await websocket.close(code=CLOSE_FORBIDDEN, reason=f"missing scope {scope!r}")
        return None
    return principal
