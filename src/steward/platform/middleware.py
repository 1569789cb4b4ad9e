"""Pure ASGI middleware: request context and access log, security headers, body-size limit."""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Iterable, Sequence

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steward.platform.errors import PROBLEM_CONTENT_TYPE, problem_body, problem_bytes
from steward.platform.logging import access_logger
from steward.platform.metrics import UNHANDLED_ERRORS, route_template
from steward.platform.proxies import Network, client_ip

log = structlog.get_logger("steward.http")

# Request ids need to be unique, not secret: a random per-process prefix and a counter cost
# far less per request than uuid4's system call.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


REQUEST_ID_HEADER = b"x-request-id"
# Incoming ids are echoed into headers and logs: accept only short, plain tokens.
_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return value.decode("ascii") if _SANE_REQUEST_ID.match(value) else None
    return None


async def send_problem(send: Send, scope: Scope, status: int, detail: str) -> None:
    """Answer directly from middleware with a problem body (no router involved)."""
    state = scope.setdefault("state", {})
    body = problem_bytes(
        problem_body(
            status,
            detail=detail,
            instance=scope.get("path", ""),
            request_id=state.get("request_id"),
        )
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Gives every request an id, binds it to logs, writes the access log, and turns any
    unhandled exception into one logged 500 problem that leaks nothing.

    Starlette's ServerErrorMiddleware would answer the 500 too, but it re-raises afterwards so
    the server logs the same traceback again; catching here logs it exactly once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope["headers"]) or new_request_id()
        # A dict of this request's own: what we keep in it (request id, user id, headers
        # for the response) must never leak to a concurrent request, even under a server
        # that hands every request the same lifespan state.
        state = scope["state"] = dict(scope.get("state", {}))
        state["request_id"] = request_id
        ip = client_ip(scope, self.trusted_proxies)
        state["client_ip"] = ip
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        status = 0
        encoded_id = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Dependencies (rate limits) leave headers here that must reach every
                # response, errors included, whatever response object the route returns.
                extra = state.get("response_headers", ())
                message["headers"] = [
                    *message.get("headers", ()),
                    *extra,
                    (REQUEST_ID_HEADER, encoded_id),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            UNHANDLED_ERRORS.inc()
            log.exception(
                "http.unhandled_error",
                method=scope["method"],
                route=route_template(scope),
                path=scope["path"],
            )
            if status == 0:
                await send_problem(
                    send_with_id, scope, 500, "an unexpected error occurred; quote the request_id"
                )
            status = status or 500
        finally:
            if self.access_log:
                access_logger().info(
                    "http.request",
                    request_id=request_id,
                    method=scope["method"],
                    route=route_template(scope),
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - start) * 1000, 2),
                    client_ip=ip,
                    user_id=state.get("user_id"),
                )


_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
# The pages (platform/pages.py) run scripts and call the API, so they get policies of their
# own: everything from this origin only, nothing from anywhere else. Swagger UI's page has an
# inline script and ReDoc starts a worker from a blob; the playground, which holds tokens,
# allows no inline script or style at all.
_DOCS_PATHS = ("/docs", "/redoc")
_DOCS_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
)
_PLAYGROUND_CSP = (
    b"content-security-policy",
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    b"form-action 'self'",
)


_NO_STORE = (b"cache-control", b"no-store")


class SecurityHeadersMiddleware:
    """Adds the headers every API response should carry. API responses hold tokens and
    personal data: unless a route says otherwise (streams: `no-cache`), no cache (browser,
    proxy, CDN) may keep them."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        common = [*_SECURITY_HEADERS, *([_HSTS] if hsts else [])]
        self._docs_headers = (*common, _DOCS_CSP)
        self._playground_headers = (*common, _PLAYGROUND_CSP)
        self._api_headers = (*common, _API_CSP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(_DOCS_PATHS):
            extra = self._docs_headers
        elif path.startswith("/playground"):
            extra = self._playground_headers
        else:
            extra = self._api_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), *extra]
                if extra is self._api_headers and not any(
                    name.lower() == b"cache-control" for name, _ in headers
                ):
                    headers.append(_NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so that FastAPI's body parser re-raises it
    (it turns any other error while reading into a 400) and the problem handler answers 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


async def _send_openai_error(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"error": {"message": detail, "type": "invalid_request_error",
                                   "param": None, "code": None}})  # fmt: skip
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Refuses request bodies over `max_bytes` (or a path's own limit in `per_path`) with
    413, by header or while streaming; in OpenAI's error shape under `openai_prefixes`
    (the routes that answer every error so)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        per_path: dict[str, int] | None = None,
        openai_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.default_bytes = max_bytes
        self.per_path = per_path or {}
        self.openai_prefixes = openai_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        max_bytes = self.per_path.get(path, self.default_bytes)
        detail = f"the request body is larger than {max_bytes} bytes"
        openai = path.startswith(self.openai_prefixes) if self.openai_prefixes else False

        async def refuse(status: int, message: str) -> None:
            if openai:
                await _send_openai_error(send, status, message)
            else:
                await send_problem(send, scope, status, message)

        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await refuse(400, "Content-Length is not a number")
                    return
                if declared > max_bytes:
                    await refuse(413, detail)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # The body is at most its declared length (the server enforces the framing),
            # or absent: nothing to count, so most requests skip the wrappers below.
            await self.app(scope, receive, send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await refuse(413, detail)
