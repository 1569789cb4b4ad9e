"""Service endpoints: liveness, readiness (PostgreSQL, Redis, broker) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from redis.asyncio import Redis

from steward.platform import db
from steward.platform.deps import resources_of
from steward.platform.errors import problem_response
from steward.platform.metrics import DEPENDENCY_UP, render_metrics
from steward.platform.sse import shutting_down

log = structlog.get_logger(__name__)

router = APIRouter(tags=["service"])


class HealthRead(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyRead(BaseModel):
    status: Literal["ok"] = "ok"
    checks: dict[str, Literal["ok", "fail"]]


_HEALTHY = HealthRead().model_dump_json().encode()


@router.get("/health", summary="Liveness: the process answers (anyone)", response_model=HealthRead)
async def health() -> Response:
    # Probes call this constantly; the body never changes, so it is rendered once.
    return Response(_HEALTHY, media_type="application/json")


async def check_broker(url: str, limit_s: float) -> None:
    """Raise unless the Celery broker at `url` (Redis or AMQP) answers within `limit_s`."""
    if url.startswith(("redis://", "rediss://", "unix://", "valkey://")):
        client = Redis.from_url(url, socket_timeout=limit_s, socket_connect_timeout=limit_s)
        try:
            await client.ping()
        finally:
            await client.aclose()
        return

    def connect() -> None:
        from kombu import Connection

        with Connection(url, connect_timeout=limit_s) as conn:
            conn.ensure_connection(max_retries=1, timeout=max(1, int(limit_s)))

    await anyio.to_thread.run_sync(connect)


@router.get(
    "/ready",
    summary="Readiness: PostgreSQL, Redis and the broker answer (anyone)",
    response_model=ReadyRead,
    responses={503: {"description": "a dependency failed; the problem names it"}},
)
async def ready(request: Request) -> ReadyRead | Response:
    resources = resources_of(request)
    if shutting_down():
        # Load balancers stop sending new requests here while in-flight ones finish.
        return problem_response(
            request, 503, detail="draining: this process is shutting down", slug="draining",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    settings = resources.settings
    timeout = settings.readiness_timeout_s
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "postgres": lambda: db.ping(resources.engine),
        "redis": resources.redis.ping,
    }
    broker = settings.broker_url
    if broker and broker != settings.redis_url:
        checks["broker"] = lambda: check_broker(broker, timeout)

    async def run(name: str, check: Callable[[], Awaitable[Any]]) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(check(), timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("ready.check_failed", check=name, error=type(exc).__name__)
            return name, f"{type(exc).__name__}"
        return name, None

    results = dict(await asyncio.gather(*(run(n, c) for n, c in checks.items())))
    failed = sorted(name for name, error in results.items() if error)
    status: dict[str, Literal["ok", "fail"]] = {
        name: "ok" if error is None else "fail" for name, error in results.items()
    }
    for name, error in results.items():
        DEPENDENCY_UP.labels(name).set(0 if error else 1)
    if failed:
        return problem_response(
            request,
            503,
            detail=f"not ready: {', '.join(failed)} failed",
            slug="not-ready",
            extra={"checks": status},
        )
    return ReadyRead(checks=status)


@router.get(
    "/metrics",
    summary="Prometheus metrics (anyone who can reach the port)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "the Prometheus text format"}},
)  # fmt: skip
async def metrics() -> Response:
    body, content_type = render_metrics()
    return Response(body, media_type=content_type)
