"""Every dependency of every route is a coroutine: a plain `def` dependency would run in the
thread pool, one thread hop per request each (measured: ~10x lower throughput)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute


def _sync_dependencies(dependant: Dependant, path: str) -> list[str]:
    found = []
    for sub in dependant.dependencies:
        call = sub.call
        if call is not None:
            # Classes are called in the thread pool too; instances count by their __call__.
            if inspect.isclass(call):
                target = None
            elif inspect.isroutine(call):
                target = call
            else:
                target = type(call).__call__
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                found.append(f"{path}: {getattr(call, '__qualname__', call)!r}")
        found.extend(_sync_dependencies(sub, path))
    return found


def _api_routes(routes: list[Any]) -> list[APIRoute | APIWebSocketRoute]:
    """Routes of the app and of every included router (FastAPI keeps those nested)."""
    found: list[APIRoute | APIWebSocketRoute] = []
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            found.append(route)
        nested = getattr(route, "original_router", None)
        if nested is not None:
            found.extend(_api_routes(nested.routes))
    return found


def test_no_route_has_a_sync_dependency(app: FastAPI) -> None:
    offenders = []
    routes = _api_routes(app.routes)
    assert len(routes) >= 15
    for route in routes:
        offenders.extend(_sync_dependencies(route.dependant, route.path))
        endpoint = route.endpoint
        if not (inspect.iscoroutinefunction(endpoint) or inspect.isasyncgenfunction(endpoint)):
            offenders.append(f"{route.path}: endpoint {endpoint.__qualname__}")
    assert offenders == []
