"""Rate limits shared by every API process: sliding-window counters in Redis, IETF
RateLimit headers, and a chosen failure mode when Redis is unreachable.

Policies are `limits` items ("600/minute"). The counting itself is one Lua script of our own
rather than the `limits` strategies: those need two scripts per request (the hit, then the
window statistics that the RateLimit header reports), measured at p50 0.67 ms against a
0.5 ms budget; one script answering both halves the round trips (bench/RESULTS.md).

Leases: a process may take a few requests' worth of budget in one round trip and spend them
locally (a sixteenth of what is left, at most `max_lease`). Leased requests count in Redis
at once, so N processes together never admit more than the limit; the cost is that budget
leased by an idle process goes unused until the window moves on. Near the limit the lease
shrinks to the request itself, which makes the last requests of a window exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from steward.platform.errors import ServiceUnavailable, TooManyRequests
from steward.platform.flights import FAILED, SingleFlight

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

# Sliding-window counter: the current fixed window's count plus the previous window's,
# weighted by how much of it still overlaps the sliding window. Redis' clock decides the
# window, so API processes with skewed clocks still agree.
# KEYS[1] key prefix; ARGV: limit, window ms, cost, lease share, max lease.
# Returns {allowed, remaining, reset ms, granted}: granted >= cost is counted now.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local share, most = tonumber(ARGV[4]), tonumber(ARGV[5])
local index = math.floor(now / window)
local current_key = KEYS[1] .. ':' .. index
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local elapsed = now - index * window
local used = math.floor(previous * (window - elapsed) / window) + current
local reset = window - elapsed
if used + cost > limit then
  return {0, math.max(0, limit - used), reset, 0}
end
local left = limit - used
local grant = math.min(left, math.max(cost, math.min(most, math.floor(left * share))))
redis.call('INCRBY', current_key, grant)
redis.call('PEXPIRE', current_key, window * 2)
return {1, limit - used - grant, reset, grant}
"""
_LEASE_SHARE = 1 / 16


@dataclass(slots=True)
class _Lease:
    tokens: int  # requests this process may still admit without asking Redis
    remaining: int  # the rest of the budget, as Redis counted it when the lease was taken
    until: float  # monotonic: the end of Redis' current window, when the lease lapses


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    name: str
    item: RateLimitItem
    fail_open: bool = True

    @property
    def window_s(self) -> int:
        return int(self.item.get_expiry())

    @classmethod
    def parse(cls, name: str, spec: str, *, fail_open: bool = True) -> RateLimitPolicy:
        return cls(name=name, item=parse(spec), fail_open=fail_open)


@dataclass(frozen=True, slots=True)
class Decision:
    policy: RateLimitPolicy
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

    def __init__(
        self, redis: Redis, *, prefix: str = "steward:rl", max_lease: int = 0,
        max_leases: int = 10_000,
    ) -> None:  # fmt: skip
        self._script = redis.register_script(_SLIDING_WINDOW)
        self._prefix = prefix
        self._last_error_log = 0.0
        self.max_lease = max_lease
        self._max_leases = max_leases
        self._leases: dict[str, _Lease] = {}
        self._leasing = SingleFlight()

    async def hit(self, policy: RateLimitPolicy, key: str, *, cost: int = 1) -> Decision:
        """Count one request against `key`; the decision says whether it may proceed."""
        name = f"{self._prefix}:{policy.name}:{key}"
        if self.max_lease <= cost:
            return (await self._ask(policy, name, cost, lease=False))[0]
        while True:
            local = self._from_lease(policy, name, cost)
            if local is not None:
                return local
            pending = self._leasing.pending(name)
            if pending is None:
                break
            # One lease in flight per key and process: wait for it rather than lease again
            # (concurrent leases would strand budget), unless it brought nothing to share.
            outcome = await pending
            if outcome is FAILED or not outcome[1]:
                return (await self._ask(policy, name, cost, lease=False))[0]
        decision, _ = await self._leasing.lead(
            name, lambda: self._ask(policy, name, cost, lease=True)
        )
        return decision

    def _from_lease(self, policy: RateLimitPolicy, name: str, cost: int) -> Decision | None:
        lease = self._leases.get(name)
        if lease is None:
            return None
        left_s = lease.until - time.monotonic()
        if lease.tokens < cost or left_s <= 0:
            del self._leases[name]
            return None
        lease.tokens -= cost
        DECISIONS.labels(policy.name, "allowed").inc()
        return Decision(
            policy=policy,
            allowed=True,
            remaining=lease.remaining + lease.tokens,
            reset_s=max(1, math.ceil(left_s)),
        )

    async def _ask(
        self, policy: RateLimitPolicy, name: str, cost: int, *, lease: bool
    ) -> tuple[Decision, bool]:
        """One round trip to Redis; the decision, and whether a lease was kept."""
        try:
            allowed, remaining, reset_ms, granted = await self._script(
                keys=[name],
                args=[policy.item.amount, policy.window_s * 1000, cost, _LEASE_SHARE,
                      max(cost, self.max_lease) if lease else cost],
            )  # fmt: skip
        except (RedisError, OSError) as exc:
            return self._unchecked(policy, exc), False
        DECISIONS.labels(policy.name, "allowed" if allowed else "limited").inc()
        spare = int(granted) - cost if allowed else 0
        if spare > 0:
            self._keep(name, spare, int(remaining), int(reset_ms) / 1000)
        decision = Decision(
            policy=policy,
            allowed=bool(allowed),
            remaining=int(remaining) + spare,
            reset_s=max(1, math.ceil(int(reset_ms) / 1000)),
        )
        return decision, spare > 0

    def _keep(self, name: str, tokens: int, remaining: int, reset_s: float) -> None:
        now = time.monotonic()
        if len(self._leases) >= self._max_leases:
            self._leases = {k: v for k, v in self._leases.items() if v.until > now}
            if len(self._leases) >= self._max_leases:
                self._leases.clear()  # unspent leases simply lapse: never over the limit
        self._leases[name] = _Lease(tokens=tokens, remaining=remaining, until=now + reset_s)

    def _unchecked(self, policy: RateLimitPolicy, exc: Exception) -> Decision:
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
