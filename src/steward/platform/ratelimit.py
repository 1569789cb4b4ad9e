"""Rate limits shared by every API process: sliding-window counters in Redis (the `limits`
library), IETF RateLimit headers, and a chosen failure mode when Redis is unreachable."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from steward.platform.errors import ServiceUnavailable, TooManyRequests

log = structlog.get_logger(__name__)

DECISIONS = Counter(
    "steward_ratelimit_decisions_total",
    "Rate-limit checks by policy and outcome (allowed, limited, unchecked).",
    ["policy", "outcome"],
)
STORAGE_ERRORS = Counter(
    "steward_ratelimit_storage_errors_total",
    "Rate-limit checks that could not reach Redis, by policy.",
    ["policy"],
)

_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    item: RateLimitItem
    fail_open: bool = True

    @property
    def window_s(self) -> int:
        return int(self.item.get_expiry())

    @classmethod
    def parse(cls, name: str, spec: str, *, fail_open: bool = True) -> Policy:
        return cls(name=name, item=parse(spec), fail_open=fail_open)


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    allowed: bool
    remaining: int
    reset_s: int
    checked: bool = True

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`RateLimit-Policy` and `RateLimit` in the IETF httpapi draft's structured form."""
        name = self.policy.name
        policy = f'"{name}";q={self.policy.item.amount};w={self.policy.window_s}'
        state = f'"{name}";r={self.remaining};t={self.reset_s}'
        return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]


class RateLimiter:
    """Counts hits per (policy, key) in Redis so that N processes enforce one limit."""

    def __init__(self, redis: Redis) -> None:
        # The library talks to Redis through our pool: same timeouts, no second pool.
        self._storage = RedisStorage(
            "async+redis://localhost:6379",  # unused: the pool below is what connects
            implementation="redispy",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            wrap_exceptions=True,
            key_prefix="steward:rl",
        )
        self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        self._last_error_log = 0.0

    async def hit(self, policy: Policy, key: str) -> Decision:
        """Count one request against `key`; the decision says whether it may proceed."""
        try:
            allowed = await self._strategy.hit(policy.item, policy.name, key)
            stats = await self._strategy.get_window_stats(policy.item, policy.name, key)
        except (StorageError, RedisError, OSError) as exc:
            return self._unchecked(policy, exc)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        DECISIONS.labels(policy.name, "allowed" if allowed else "limited").inc()
        return Decision(policy=policy, allowed=allowed, remaining=stats.remaining, reset_s=reset)

    def _unchecked(self, policy: Policy, exc: Exception) -> Decision:
        STORAGE_ERRORS.labels(policy.name).inc()
        DECISIONS.labels(policy.name, "unchecked").inc()
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY_S:
            self._last_error_log = now
            log.warning(
                "ratelimit.storage_unavailable",
                policy=policy.name,
                fail_open=policy.fail_open,
                error=type(exc).__name__,
            )
        if not policy.fail_open:
            raise ServiceUnavailable(
                "this endpoint is temporarily unavailable; retry shortly",
                headers={"Retry-After": "5"},
            )
        return Decision(policy=policy, allowed=True, remaining=0, reset_s=0, checked=False)


def enforce(decision: Decision) -> None:
    """Raise the 429 problem for a refused decision (its headers ride along)."""
    if not decision.allowed:
        raise TooManyRequests(
            f"rate limit {decision.policy.name!r} exceeded; retry in {decision.reset_s} s",
            retry_after=decision.reset_s,
        )
