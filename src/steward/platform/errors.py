"""Errors: the domain exception tree and its mapping to RFC 9457 problem responses.

    StewardError                 base; status 500 unless a subclass says otherwise
    ├── BadRequest               400 the request is understood but unusable
    ├── Unauthorized             401 no valid credentials (adds WWW-Authenticate)
    ├── Forbidden                403 credentials valid, permission missing
    ├── NotFound                 404 absent, or not the caller's to see
    ├── Conflict                 409 clashes with the current state (duplicates)
    ├── Gone                     410 existed once, expired now
    ├── PreconditionFailed       412 `If-Match` and friends did not match
    ├── PayloadTooLarge          413 body over the configured limit
    ├── UnprocessableContent     422 well-formed but invalid (adds `errors[]` when given)
    ├── TooManyRequests          429 rate limit (adds Retry-After)
    │   └── QuotaExceeded        429 a daily token quota is used up
    └── ServiceUnavailable       503 a dependency is down

Services raise these; routers never catch them; `install_handlers` maps them in one place.
An error raised inside a request rolls its transaction back, unless its class sets
`keeps_changes` (for example: a reused refresh token revokes its session, then answers 401).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://steward.dev/problems/"


class StewardError(Exception):
    """Base of every error a service may raise on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    keeps_changes: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or HTTPStatus(self.status).phrase)
        self.detail = detail or HTTPStatus(self.status).phrase
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(StewardError):
    status = 400
    slug = "bad-request"


class Unauthorized(StewardError):
    status = 401
    slug = "unauthorized"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(StewardError):
    status = 403
    slug = "forbidden"


class EmailNotVerified(Forbidden):
    slug = "email-not-verified"


class ReauthenticationRequired(Forbidden):
    slug = "reauthentication-required"


class NotFound(StewardError):
    status = 404
    slug = "not-found"


class Conflict(StewardError):
    status = 409
    slug = "conflict"


class Gone(StewardError):
    status = 410
    slug = "gone"


class PreconditionFailed(StewardError):
    status = 412
    slug = "precondition-failed"


class PayloadTooLarge(StewardError):
    status = 413
    slug = "payload-too-large"


class UnsupportedMediaType(StewardError):
    status = 415
    slug = "unsupported-media-type"


class UnprocessableContent(StewardError):
    status = 422
    slug = "validation-error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, **kwargs)
        if errors is not None:
            self.extra["errors"] = list(errors)


class TooManyRequests(StewardError):
    status = 429
    slug = "rate-limited"

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, retry_after)))


class QuotaExceeded(TooManyRequests):
    slug = "quota-exceeded"


class ServiceUnavailable(StewardError):
    status = 503
    slug = "service-unavailable"


_SLUG_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition-failed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    503: "service-unavailable",
}


def slug_for(status: int) -> str:
    """The problem type's last segment for a status with no more specific one."""
    return _SLUG_BY_STATUS.get(status, "error")


def problem_body(
    status: int,
    *,
    detail: str | None,
    instance: str,
    request_id: str | None,
    slug: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 object every error response carries."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or slug_for(status)),
        "title": title,
        "status": status,
        "detail": detail or title,
        "instance": instance,
        "request_id": request_id,
    }
    if extra:
        body.update(extra)
    return body


def problem_bytes(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, default=str)


def problem_response(
    request: Request,
    status: int,
    *,
    detail: str | None,
    slug: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    body = problem_body(
        status,
        detail=detail,
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
        slug=slug,
        extra=extra,
    )
    return Response(
        problem_bytes(body),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Echoing `input` back could reflect secrets (a password that failed a rule), so only
    # the location, message and error type leave the service.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


async def _on_steward_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StewardError)
    return problem_response(
        request,
        exc.status,
        detail=exc.detail,
        slug=exc.slug,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(request, exc.status_code, detail=detail, headers=exc.headers)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    malformed = any(err["type"] == "json_invalid" for err in errors)
    return problem_response(
        request,
        422,
        detail="the request body is not valid JSON" if malformed else "the request is invalid",
        extra={"errors": errors},
    )


# A dependency that cannot be reached (PostgreSQL, Redis, the broker) is an outage to wait
# out, not a bug: 503 with Retry-After instead of a 500 and its traceback.
OUTAGES: tuple[type[Exception], ...] = (
    ConnectionError,
    TimeoutError,  # a deadline on a dependency ran out (asyncpg's connect and command ones)
    RedisConnectionError,
    RedisTimeoutError,
    DBAPIError,
    SQLAlchemyTimeoutError,
    KombuOperationalError,
)


async def _on_outage(request: Request, exc: Exception) -> Response:
    if (
        isinstance(exc, DBAPIError)
        and not exc.connection_invalidated
        and not isinstance(exc, OperationalError | InterfaceError)
    ):
        raise exc  # a bad statement is a bug: the middleware logs it and answers 500
    log.warning("dependency.unavailable", error=type(exc).__name__, path=request.url.path)
    return problem_response(
        request,
        503,
        detail="a service this request needs is unavailable; retry shortly",
        slug="dependency-unavailable",
        headers={"Retry-After": "5"},
    )


def install_handlers(app: FastAPI) -> None:
    """Map every expected error to a problem response; the 500 path lives in the middleware."""
    for outage in OUTAGES:
        app.add_exception_handler(outage, _on_outage)
    app.add_exception_handler(StewardError, _on_steward_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
