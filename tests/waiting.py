"""Waiting for a condition, with a deadline: what tests do instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_until(
    condition: Callable[[], Any],
    *,
    within_s: float = 10.0,
    every_s: float = 0.05,
    what: str = "the condition",
) -> Any:
    """Poll `condition` (plain or async) until it returns something truthy, and return that;
    fail the test once `within_s` has passed."""
    deadline = time.monotonic() + within_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(every_s)
