"""Cache-aside on Redis with version-keyed namespaces, single-flight recomputation, stale
serving, negative entries and jittered TTLs.

Written here rather than taken from a library: the pieces that matter (a per-namespace
version read in the same round trip as the entry, invalidation only after the writing
transaction commits, and "Redis down means bypass, never an error") cut across what the
caching libraries we looked at expose, and together they fit in this one small module.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

log = structlog.get_logger(__name__)

LOOKUPS = Counter(
    "steward_cache_lookups_total",
    "Cache reads by namespace kind and result (hit, miss, stale, negative, bypass).",
    ["kind", "result"],
)
RECOMPUTE_SECONDS = Histogram(
    "steward_cache_recompute_seconds",
    "Time spent computing a value after a miss or expiry.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

MISSING: Final = object()
"""Returned (and cached, briefly) when the computed value does not exist."""

_PENDING_KEY = "steward.cache_invalidations"

# One round trip: the namespace's version, then the entry stored under that version.
_READ_SCRIPT = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. version .. ARGV[2])}
"""
# Release a lock only if it is still ours (it may have expired and been taken over).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Compute = Callable[[], Awaitable[Any]]


class Cache:
    """Values are JSON. A fresh entry is a hit; an expired one is recomputed by a single
    caller (holding a short lock) while the others serve it stale or wait briefly."""

    def __init__(
        self,
        redis: Redis,
        *,
        enabled: bool = True,
        prefix: str = "steward:cache",
        jitter: float = 0.1,
        lock_ttl_s: float = 5.0,
        wait_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self.enabled = enabled
        self._prefix = prefix
        self._jitter = jitter
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._wait_s = wait_s
        self._read = redis.register_script(_READ_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)

    def _version_key(self, namespace: str) -> str:
        return f"{self._prefix}:ver:{namespace}"

    def _ttl(self, seconds: float) -> float:
        """Seconds with random jitter, so entries written together do not expire together."""
        return seconds * (1 + random.uniform(-self._jitter, self._jitter))  # noqa: S311

    async def get_or_compute(
        self,
        namespace: str,
        key: str,
        compute: Compute,
        *,
        ttl_s: float,
        stale_s: float = 30.0,
        negative_ttl_s: float = 10.0,
        kind: str = "default",
    ) -> Any:
        """The cached value, else `compute()`'s (which may return MISSING for "absent")."""
        if not self.enabled:
            return await compute()
        head = f"{self._prefix}:{namespace}:"
        try:
            version_raw, raw = await self._read(
                keys=[self._version_key(namespace)], args=[head, f":{key}"]
            )
        except (RedisError, OSError) as exc:
            return await self._bypass(compute, kind, exc)
        version = version_raw.decode() if isinstance(version_raw, bytes) else str(version_raw)
        entry_key = f"{head}{version}:{key}"
        entry = orjson.loads(raw) if raw is not None else None
        now = time.time()
        if entry is not None and entry["s"] > now:
            LOOKUPS.labels(kind, "negative" if entry.get("n") else "hit").inc()
            return MISSING if entry.get("n") else entry["v"]

        token = secrets.token_hex(8)
        lock_key = f"{entry_key}:lock"
        try:
            locked = await self._redis.set(lock_key, token, nx=True, px=self._lock_ttl_ms)
        except (RedisError, OSError) as exc:
            return await self._bypass(compute, kind, exc)
        if not locked:
            if entry is not None:
                LOOKUPS.labels(kind, "stale").inc()
                return MISSING if entry.get("n") else entry["v"]
            waited = await self._wait_for(entry_key, kind)
            if waited is not None:
                return waited
            LOOKUPS.labels(kind, "miss").inc()
            return await compute()

        LOOKUPS.labels(kind, "miss").inc()
        try:
            started = time.perf_counter()
            value = await compute()
            RECOMPUTE_SECONDS.labels(kind).observe(time.perf_counter() - started)
            await self._store(entry_key, value, ttl_s, stale_s, negative_ttl_s)
        finally:
            with contextlib.suppress(RedisError, OSError):  # else the lock expires by itself
                await self._release(keys=[lock_key], args=[token])
        return value

    async def _store(
        self, entry_key: str, value: Any, ttl_s: float, stale_s: float, negative_ttl_s: float
    ) -> None:
        negative = value is MISSING
        fresh = self._ttl(negative_ttl_s if negative else ttl_s)
        body = (
            {"s": time.time() + fresh, "n": True}
            if negative
            else {"s": time.time() + fresh, "v": value}
        )
        try:
            await self._redis.set(
                entry_key,
                orjson.dumps(body, default=str),
                px=max(1, int((fresh + (0 if negative else stale_s)) * 1000)),
            )
        except (RedisError, OSError) as exc:
            log.warning("cache.store_failed", error=type(exc).__name__)

    async def _wait_for(self, entry_key: str, kind: str) -> Any | None:
        """Another caller is recomputing: poll briefly for its result."""
        deadline = time.monotonic() + self._wait_s
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            try:
                raw = await self._redis.get(entry_key)
            except (RedisError, OSError):
                return None
            if raw is not None:
                entry = orjson.loads(raw)
                if entry["s"] > time.time():
                    LOOKUPS.labels(kind, "hit").inc()
                    return MISSING if entry.get("n") else entry["v"]
        return None

    async def _bypass(self, compute: Compute, kind: str, exc: Exception) -> Any:
        LOOKUPS.labels(kind, "bypass").inc()
        log.debug("cache.bypass", error=type(exc).__name__)
        return await compute()

    async def invalidate(self, *namespaces: str) -> None:
        """Move namespaces to a new version: their old entries are never read again and
        simply expire. Failures are logged, not raised (entries still expire by TTL)."""
        if not self.enabled or not namespaces:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for namespace in namespaces:
                    pipe.incr(self._version_key(namespace))
                    pipe.expire(self._version_key(namespace), 7 * 86_400)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning(
                "cache.invalidate_failed", namespaces=len(namespaces), error=type(exc).__name__
            )


def invalidate_after_commit(session: AsyncSession, *namespaces: str) -> None:
    """Invalidate once the transaction commits: earlier, a concurrent reader could cache
    the pre-commit state under the new version."""
    session.info.setdefault(_PENDING_KEY, set()).update(namespaces)


async def flush_invalidations(session: AsyncSession, cache: Cache) -> None:
    pending: set[str] = session.info.pop(_PENDING_KEY, set())
    if pending:
        await cache.invalidate(*sorted(pending))
