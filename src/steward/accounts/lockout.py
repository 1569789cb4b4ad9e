"""Failed sign-ins counted per account: after a few, the account refuses sign-in for a time
that doubles with each further failure (capped), whatever address the guesses come from.

Counting failures rather than attempts is the point: people behind one carrier NAT or office
address sign in successfully all day and never lock each other out; a password guesser is
slowed on the account it targets. A looser per-IP ceiling (`RATE_LIMIT_LOGIN`) still stops
one address spraying many accounts. Counters live in Redis so every process agrees; the
small script keeps "count, then lock" atomic between processes.
"""

from __future__ import annotations

import hashlib
import math

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from steward.platform.errors import ServiceUnavailable, TooManyRequests

log = structlog.get_logger(__name__)

# KEYS: failures counter, lock. ARGV: threshold, base seconds, max seconds, failure memory.
# Returns the lock's seconds (0: not locked).
_FAIL = """
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local over = failures - tonumber(ARGV[1])
if over < 0 then return 0 end
local seconds = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * math.pow(2, over))
redis.call('SET', KEYS[2], failures, 'EX', math.ceil(seconds))
return math.ceil(seconds)
"""


class Lockout:
    """Per-account failed sign-in counting, lock and backoff."""

    def __init__(
        self, redis: Redis, *, threshold: int, base_s: float, max_s: float, fail_open: bool,
        prefix: str = "steward:lockout",
    ) -> None:  # fmt: skip
        self._redis = redis
        self._fail = redis.register_script(_FAIL)
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.fail_open = fail_open
        self._prefix = prefix

    def _keys(self, account: str) -> tuple[str, str]:
        # Hashed: the keys need not show who tried to sign in.
        digest = hashlib.sha256(account.strip().lower().encode()).hexdigest()[:32]
        return f"{self._prefix}:fail:{digest}", f"{self._prefix}:lock:{digest}"

    def _unavailable(self, exc: RedisError) -> None:
        log.warning("lockout.redis_unavailable", error=type(exc).__name__)
        if not self.fail_open:
            raise ServiceUnavailable(
                "sign-in is unavailable for a moment; retry shortly",
                headers={"Retry-After": "5"},
            ) from None

    async def check(self, account: str) -> None:
        """Refuse (429 with Retry-After) while the account is locked."""
        _, lock = self._keys(account)
        try:
            ttl = await self._redis.ttl(lock)
        except RedisError as exc:
            self._unavailable(exc)
            return
        if ttl > 0:
            raise TooManyRequests(
                "too many failed sign-ins for this account; retry later", retry_after=ttl
            )

    async def failed(self, account: str) -> None:
        failures, lock = self._keys(account)
        memory = math.ceil(self.max_s * 4)
        try:
            seconds = await self._fail(
                keys=[failures, lock], args=[self.threshold, self.base_s, self.max_s, memory]
            )
        except RedisError as exc:
            self._unavailable(exc)
            return
        if seconds:
            log.warning("lockout.locked", seconds=int(seconds))

    async def succeeded(self, account: str) -> None:
        try:
            await self._redis.delete(*self._keys(account))
        except RedisError as exc:
            self._unavailable(exc)
