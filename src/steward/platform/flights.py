"""Single flight: at most one call per key in flight in this process; whoever asks while it
runs waits for its outcome instead of making the same call again.

Written here: it is a dozen lines, and the libraries that offer it (aiocache's decorators,
for one) bring a cache of their own along with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final, TypeVar

T = TypeVar("T")

FAILED: Final = object()
"""The outcome waiters see when the call raised or was cancelled: they must call themselves."""


class SingleFlight:
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[Any]] = {}

    def pending(self, key: Hashable) -> Awaitable[Any] | None:
        """The outcome of the call in flight for `key` (FAILED if it fails), or None. A
        waiter that is cancelled leaves the call and the other waiters alone."""
        future = self._calls.get(key)
        return None if future is None else asyncio.shield(future)

    async def lead(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        """Make the call for `key`; its result is handed to everyone waiting meanwhile."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        outcome: Any = FAILED
        try:
            outcome = await call()
            return outcome  # type: ignore[no-any-return]
        finally:
            del self._calls[key]
            future.set_result(outcome)
