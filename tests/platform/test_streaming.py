"""The stream rules hold by construction: every SSE and WebSocket endpoint goes through
`platform/streaming.py` (counted, capped, pinged) and holds no request session
(tests/notifications/test_realtime.py and tests/assistant check the behaviour itself)."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute

from steward.platform.deps import get_session


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Every route, also those of included routers (FastAPI keeps them in their router)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


def _streaming(app: FastAPI) -> list[APIRoute | APIWebSocketRoute]:
    routes: list[APIRoute | APIWebSocketRoute] = []
    for route in _flat(app.routes):
        if isinstance(route, APIWebSocketRoute):
            routes.append(route)
        elif isinstance(route, APIRoute):
            content = (route.responses.get(200) or {}).get("content", {})
            if "text/event-stream" in content:
                routes.append(route)
    return routes


def test_every_stream_uses_the_toolkit_and_holds_no_session(app: FastAPI) -> None:
    routes = _streaming(app)
    paths = {route.path for route in routes}
    assert {"/api/v1/realtime", "/api/v1/realtime/events", "/api/v1/assistant/ws",
            "/api/v1/assistant/runs/{run_id}/events", "/chat",
            "/v1/chat/completions"} <= paths, paths  # fmt: skip
    for route in routes:
        assert get_session not in set(_calls(route.dependant)), f"{route.path} holds a session"
        source = ast.parse(inspect.getsource(inspect.getmodule(route.endpoint)))  # type: ignore[arg-type]
        used = {node.id for node in ast.walk(source) if isinstance(node, ast.Name)}
        toolkit = {"sse_response", "open_socket"} & used
        assert toolkit, f"{route.path} streams without platform/streaming.py"
        others = {"EventSourceResponse", "StreamingResponse", "EventStream"} & used
        assert not others, f"{route.path}'s module streams another way: {others}"
