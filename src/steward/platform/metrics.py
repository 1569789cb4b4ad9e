"""Prometheus metrics: HTTP instruments, their ASGI middleware and the `/metrics` exposition."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from request start to the end of the response body, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests being served now.",
    ["method"],
    multiprocess_mode="livesum",
)
LOOP_LAG = Histogram(
    "steward_event_loop_lag_seconds",
    "How late the event loop ran a timer due now: time stolen by blocking or busy code.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
LOOP_TASKS = Gauge(
    "steward_event_loop_tasks",
    "Tasks alive on the event loop; a count that only grows is a leak.",
    multiprocess_mode="livesum",
)
UNHANDLED_ERRORS = Counter(
    "steward_unhandled_errors_total",
    "Exceptions that reached the top of the stack and became 500 responses.",
)

REDIS_CIRCUIT_OPEN = Gauge(
    "steward_redis_circuit_open",
    "1 while a Redis client's circuit breaker is open (calls fail at once), else 0.",
    ["client"],
    multiprocess_mode="max",
)
DEPENDENCY_UP = Gauge(
    "steward_dependency_up",
    "1 if the dependency answered the last readiness check (/ready, run by the probes), else 0.",
    ["dependency"],
    multiprocess_mode="livemin",
)

UNMATCHED_ROUTE = "<unmatched>"
# Methods outside this set are folded into one label value so a client cannot mint series.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/api/v1/todos/{todo_id}`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # `.labels()` takes a lock and builds a key on every call; the label sets are few
        # (methods x route templates x statuses), so their children are kept here.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._in_progress = {method: HTTP_IN_PROGRESS.labels(method) for method in _KNOWN_METHODS}
        self._in_progress["OTHER"] = HTTP_IN_PROGRESS.labels("OTHER")

    def _series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            series = (
                HTTP_DURATION.labels(method, route),
                HTTP_REQUESTS.labels(method, route, str(status)),
            )
            self._children[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
        status = 500
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self._in_progress[method]
        in_progress.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            in_progress.dec()
            duration, requests = self._series(method, route_template(scope), status)
            duration.observe(time.perf_counter() - start)
            requests.inc()


def render_metrics() -> tuple[bytes, str]:
    """The exposition body and its content type; aggregates all processes under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def watch_event_loop(interval_s: float = 0.25) -> None:
    """Until cancelled: sleep `interval_s` and record how much later than asked we woke;
    every fourth time, count the loop's tasks."""
    rounds = 0
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval_s)
        LOOP_LAG.observe(max(0.0, time.perf_counter() - started - interval_s))
        if rounds % 4 == 0:
            LOOP_TASKS.set(len(asyncio.all_tasks()))
        rounds += 1
