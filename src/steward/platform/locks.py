"""Distributed locks on Redis for work that one process at a time may do (scheduled jobs).

A thin layer over redis-py's asyncio Lock, which already gives what matters: a random token
per holder, a TTL so a crashed holder cannot block forever, release and extension by Lua
scripts that act only when the token still matches (only the owner releases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError

log = structlog.get_logger(__name__)

_PREFIX = "steward:lock:"


class LockUnavailable(Exception):
    """Another holder has the lock (and kept it past `wait_s`)."""


def make_lock(redis: Redis, name: str, *, ttl_s: float = 30.0) -> Lock:
    """A lock object; `acquire(blocking=...)`, `extend(seconds)`, `release()` as redis-py."""
    return Lock(redis, _PREFIX + name, timeout=ttl_s, thread_local=False)


@asynccontextmanager
async def hold(
    redis: Redis, name: str, *, ttl_s: float = 30.0, wait_s: float = 0.0
) -> AsyncIterator[Lock]:
    """Hold `name` for the block, or raise LockUnavailable. Long work calls
    `lock.extend(ttl_s)` (or `reacquire()`) before the TTL runs out."""
    lock = make_lock(redis, name, ttl_s=ttl_s)
    acquired = await lock.acquire(blocking=wait_s > 0, blocking_timeout=wait_s or None)
    if not acquired:
        raise LockUnavailable(name)
    try:
        yield lock
    finally:
        try:
            await lock.release()
        except LockError:
            # The TTL ran out and someone else may hold it now: theirs to release.
            log.warning("lock.expired_before_release", lock=name)
