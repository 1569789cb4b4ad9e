"""Async code inside Celery's synchronous tasks: one event loop and one set of pooled
connections per worker process, reused by every task that process runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import steward.models  # noqa: F401 - every table, so cross-domain foreign keys resolve
from steward.platform.resources import Resources
from steward.settings import get_settings

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_resources: Resources | None = None


def run(work: Callable[[Resources], Awaitable[T]]) -> T:
    """Run `work(resources)` to completion on this process's loop."""
    global _loop, _resources
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    if _resources is None:
        _resources = Resources.open(get_settings())
    return _loop.run_until_complete(work(_resources))


def reset() -> None:
    """Forget the loop and connections (after a fork: they belong to the parent)."""
    global _loop, _resources
    _loop, _resources = None, None
