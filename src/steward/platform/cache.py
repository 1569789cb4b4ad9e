"""Cache-aside on Redis with version-keyed namespaces, single-flight recomputation, stale
serving, negative entries and jittered TTLs, plus an optional near cache: each process keeps
copies of the entries it read recently and drops them when any process invalidates their
namespace (announced over Redis Pub/Sub), so a hot read costs no round trip at all.

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
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import structlog
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from steward.platform.flights import FAILED, SingleFlight

log = structlog.get_logger(__name__)

LOOKUPS = Counter(
    "steward_cache_lookups_total",
    "Cache reads by namespace kind and result (local, hit, miss, stale, negative, bypass);"
    " local is a hit in this process' near cache, hit one in Redis.",
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

# One round trip: the namespace's version, then the entry stored under that version.
_READ_SCRIPT = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. version .. ARGV[2])}
"""
# Move namespaces to new versions and announce each new version to every process's near
# cache. KEYS: version keys; ARGV[1]: channel, ARGV[2..]: the namespaces. Returns versions.
_INVALIDATE_SCRIPT = """
local versions = {}
for i, key in ipairs(KEYS) do
  local version = redis.call('INCR', key)
  redis.call('EXPIRE', key, 604800)
  redis.call('PUBLISH', ARGV[1], version .. ' ' .. ARGV[i + 1])
  versions[i] = version
end
return versions
"""
# Release a lock only if it is still ours (it may have expired and been taken over).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Compute = Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class _Copy:
    version: int
    until: float  # monotonic: the Redis entry's freshness, capped by the near cache's max age
    value: Any
    refreshing: bool = False


# How long an expired copy may still be served while one caller refreshes it from Redis.
# Without it, every request in flight misses at the same instant when a hot copy expires,
# and redis-py hands its pool's lock to those callers one loop iteration at a time: they
# queued for up to 1.3 s behind a busy loop (measured, /users/me at 3k req/s).
_REFRESH_GRACE_S = 1.0


class NearCache:
    """This process' copies of Redis entries, by namespace, least recently used dropped first
    (namespaces, and the oldest copy within one past `max_per_namespace`).

    A copy is stored only if nothing made it stale while it was being read: `floors` holds
    the newest version announced per namespace, and `epoch` moves whenever announcements may
    have been missed (the subscription was lost or re-made, or a floor was forgotten), which
    voids every read started before. Without a live subscription nothing is served or kept;
    `max_age_s` bounds a copy's life even if the subscription dies without an error.
    """

    def __init__(
        self, *, max_age_s: float, max_namespaces: int = 10_000, max_per_namespace: int = 64
    ) -> None:
        self.max_age_s = max_age_s
        self.max_namespaces = max_namespaces
        self.max_per_namespace = max_per_namespace
        self.live = False
        self.epoch = 0
        self._copies: OrderedDict[str, dict[str, _Copy]] = OrderedDict()
        self._floors: OrderedDict[str, int] = OrderedDict()

    def get(self, namespace: str, key: str) -> _Copy | None:
        copies = self._copies.get(namespace)
        copy = copies.get(key) if copies is not None else None
        if copy is None:
            return None
        now = time.monotonic()
        if copy.until <= now:
            if copy.until + _REFRESH_GRACE_S <= now:
                del copies[key]  # type: ignore[union-attr]
                return None
            if not copy.refreshing:
                copy.refreshing = True  # this caller reads Redis; the others are served
                return None
        self._copies.move_to_end(namespace)
        return copy

    def put(
        self, namespace: str, key: str, *, version: int, epoch: int, fresh_until: float, value: Any
    ) -> None:
        if not self.live or epoch != self.epoch or version < self._floors.get(namespace, 0):
            return
        copies = self._copies.get(namespace)
        if copies is None:
            copies = self._copies[namespace] = {}
            if len(self._copies) > self.max_namespaces:
                self._copies.popitem(last=False)
        else:
            self._copies.move_to_end(namespace)
        now = time.monotonic()
        until = now + min(self.max_age_s, fresh_until - time.time())
        copies.pop(key, None)
        copies[key] = _Copy(version, until, value)
        if len(copies) > self.max_per_namespace:  # e.g. one user reading many todos
            del copies[next(iter(copies))]

    def invalidated(self, namespace: str, version: int) -> None:
        """`namespace` moved to `version`: its copies go, older reads may not be kept."""
        self._copies.pop(namespace, None)
        if version > self._floors.get(namespace, 0):
            self._floors[namespace] = version
            self._floors.move_to_end(namespace)
            if len(self._floors) > 4 * self.max_namespaces:
                self._floors.popitem(last=False)
                self.epoch += 1  # a forgotten floor could let a stale read in: void them all

    def reset(self, *, live: bool) -> None:
        self._copies.clear()
        self._floors.clear()
        self.epoch += 1
        self.live = live


class Cache:
    """Values are JSON. A fresh entry is a hit; an expired one is recomputed by a single
    caller (holding a short lock) while the others serve it stale or wait briefly.

    With `local_ttl_s` > 0 and `follow_invalidations()` running, fresh entries are also kept
    in this process for up to that long. Values are shared between callers then: treat what
    `get_or_compute` returns as read-only.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        enabled: bool = True,
        prefix: str = "steward:cache",
        jitter: float = 0.1,
        lock_ttl_s: float = 5.0,
        wait_s: float = 1.0,
        local_ttl_s: float = 0.0,
    ) -> None:
        self._redis = redis
        self.enabled = enabled
        self._prefix = prefix
        self._jitter = jitter
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._wait_s = wait_s
        self._read = redis.register_script(_READ_SCRIPT)
        self._release = redis.register_script(_RELEASE_SCRIPT)
        self._invalidate = redis.register_script(_INVALIDATE_SCRIPT)
        self.channel = f"{prefix}:invalidations"
        self.near = NearCache(max_age_s=local_ttl_s) if enabled and local_ttl_s > 0 else None
        self._flights = SingleFlight()

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
        near = self.near if self.near is not None and self.near.live else None
        copy = near.get(namespace, key) if near is not None else None
        if copy is not None:
            LOOKUPS.labels(kind, "negative" if copy.value is MISSING else "local").inc()
            return copy.value

        async def read() -> Any:
            return await self._read_through(
                namespace, key, compute, ttl_s=ttl_s, stale_s=stale_s,
                negative_ttl_s=negative_ttl_s, kind=kind, near=near,
            )  # fmt: skip

        if near is None:
            return await read()
        # One read per key in flight in this process; concurrent callers share its result
        # (a cold or expired hot key would otherwise send every request in flight to Redis
        # at once, where redis-py queues them on its pool's lock).
        pending = self._flights.pending((namespace, key))
        if pending is None:
            return await self._flights.lead((namespace, key), read)
        shared = await pending
        if shared is FAILED:
            return await read()
        LOOKUPS.labels(kind, "negative" if shared is MISSING else "local").inc()
        return shared

    async def _read_through(
        self,
        namespace: str,
        key: str,
        compute: Compute,
        *,
        ttl_s: float,
        stale_s: float,
        negative_ttl_s: float,
        kind: str,
        near: NearCache | None,
    ) -> Any:
        """Redis, then `compute()` under the lock; keeps a copy in `near` when given."""
        epoch = near.epoch if near is not None else 0  # an invalidation from now on voids it
        head = f"{self._prefix}:{namespace}:"
        try:
            version_raw, raw = await self._read(
                keys=[self._version_key(namespace)], args=[head, f":{key}"]
            )
        except (RedisError, OSError) as exc:
            return await self._bypass(compute, kind, exc)
        version = int(version_raw)
        entry_key = f"{head}{version}:{key}"
        entry = orjson.loads(raw) if raw is not None else None
        now = time.time()
        if entry is not None and entry["s"] > now:
            LOOKUPS.labels(kind, "negative" if entry.get("n") else "hit").inc()
            value = MISSING if entry.get("n") else entry["v"]
            if near is not None:
                near.put(namespace, key, version=version, epoch=epoch, fresh_until=entry["s"],
                         value=value)  # fmt: skip
            return value

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
            fresh_until = await self._store(entry_key, value, ttl_s, stale_s, negative_ttl_s)
            if near is not None and fresh_until is not None:
                near.put(namespace, key, version=version, epoch=epoch, fresh_until=fresh_until,
                         value=value)  # fmt: skip
        finally:
            with contextlib.suppress(RedisError, OSError):  # else the lock expires by itself
                await self._release(keys=[lock_key], args=[token])
        return value

    async def _store(
        self, entry_key: str, value: Any, ttl_s: float, stale_s: float, negative_ttl_s: float
    ) -> float | None:
        """Store the entry; its fresh-until time, or None when Redis did not take it."""
        negative = value is MISSING
        fresh_until = time.time() + self._ttl(negative_ttl_s if negative else ttl_s)
        body = {"s": fresh_until, "n": True} if negative else {"s": fresh_until, "v": value}
        try:
            await self._redis.set(
                entry_key,
                orjson.dumps(body, default=str),
                px=max(1, int((fresh_until - time.time() + (0 if negative else stale_s)) * 1000)),
            )
        except (RedisError, OSError) as exc:
            log.warning("cache.store_failed", error=type(exc).__name__)
            return None
        return fresh_until

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
            versions = await self._invalidate(
                keys=[self._version_key(namespace) for namespace in namespaces],
                args=[self.channel, *namespaces],
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "cache.invalidate_failed", namespaces=len(namespaces), error=type(exc).__name__
            )
            if self.near is not None:
                # Other processes may keep their copies until `local_ttl_s`; this one, which
                # made the change, must at least read its own writes.
                self.near.reset(live=self.near.live)
            return
        if self.near is not None:  # at once here; the announcement reaches the others
            for namespace, version in zip(namespaces, versions, strict=True):
                self.near.invalidated(namespace, int(version))

    async def follow_invalidations(self, *, retry_s: float = 1.0) -> None:
        """Keep the near cache coherent: apply every process' invalidations as announced.
        Runs until cancelled; while unsubscribed, the near cache is off and empty."""
        near = self.near
        if near is None:
            return
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    # A bounded wait, not `listen()`: a quiet channel must not trip the
                    # client's socket timeout. The client's health checks PING it meanwhile.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # also after a silent reconnect
                        near.reset(live=True)
                    elif message["type"] == "message":
                        version, _, namespace = message["data"].decode().partition(" ")
                        near.invalidated(namespace, int(version))
            except (RedisError, OSError) as exc:
                log.warning("cache.invalidations_lost", error=type(exc).__name__)
            finally:
                near.reset(live=False)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(retry_s)
