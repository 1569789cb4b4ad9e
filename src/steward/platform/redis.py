"""Redis (or Valkey) clients: pooled asyncio clients per process, with explicit timeouts.

Two clients, because two kinds of call have different deadlines:
- the request path's (rate limits, the cache and near cache, principals, sign-in lockout):
  each call has a deadline well under a second (`REDIS_REQUEST_TIMEOUT_S`), and a circuit
  breaker stops sending to a Redis that keeps failing, so that a frozen or dead Redis costs
  a request at most that deadline and then nothing (callers apply their fail-open or
  fail-closed policy at once);
- everything else (run logs, pub/sub, stream readers, usage): the longer
  `REDIS_SOCKET_TIMEOUT_S`, since a batch of a thousand streams' events may take longer
  than a request's deadline and must not be dropped for it.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from steward.platform.metrics import REDIS_CIRCUIT_OPEN
from steward.settings import Settings

log = structlog.get_logger(__name__)


class CircuitOpen(RedisConnectionError):
    """Raised instead of sending to a Redis the breaker considers down."""


class CircuitBreaker:
    """Opens after `failures` consecutive failed calls; while open, calls fail at once; one
    call per `reset_s` is let through to probe, and a success closes it (a probe that
    neither succeeds nor fails, a pub/sub poll, just waits for the next period).

    Written here because it must sit inside the Redis client's connection (so that every
    command, pipeline and script is covered), where no breaker library plugs in."""

    def __init__(self, *, failures: int, reset_s: float, name: str = "redis") -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self.name = name
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        if not self.is_open:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.reset_s  # this call probes; the next may in a period
        return True

    def succeeded(self) -> None:
        if self.is_open:
            log.info("redis.circuit_closed", client=self.name)
            REDIS_CIRCUIT_OPEN.labels(self.name).set(0)
        self._failures = 0

    def failed(self) -> None:
        self._failures += 1
        if self._failures >= self.threshold:
            if self._failures == self.threshold:
                log.warning("redis.circuit_opened", client=self.name, reset_s=self.reset_s)
                REDIS_CIRCUIT_OPEN.labels(self.name).set(1)
            self._open_until = time.monotonic() + self.reset_s


_FAILURES = (RedisConnectionError, RedisTimeoutError, OSError)


class _Guarded(AbstractConnection):
    """Mixed into the URL's connection class (TCP, TLS or Unix socket): asks the pool's
    breaker before connecting or sending, and tells it how each command went."""

    def __init__(self, *, breaker: CircuitBreaker, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.breaker = breaker

    def _refuse(self) -> None:
        if not self.breaker.allow():
            raise CircuitOpen("Redis is unreachable (circuit open); not trying for a moment")

    async def connect(self) -> None:
        self._refuse()
        try:
            await super().connect()  # type: ignore[no-untyped-call]
        except _FAILURES:
            self.breaker.failed()
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.is_connected:  # else connect() asks
            self._refuse()
        try:
            await super().send_packed_command(command, check_health)
        except CircuitOpen:
            raise
        except _FAILURES:
            self.breaker.failed()
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)
        except _FAILURES:
            self.breaker.failed()
            raise
        if kwargs.get("timeout") is None:  # else a pub/sub poll that may simply be empty
            self.breaker.succeeded()
        return response


def create_redis(settings: Settings, *, url: str | None = None) -> Redis:
    """The general client (longer socket timeout, one quick retry). Its pool makes a caller
    wait for a free connection (up to the socket timeout) rather than fail at once: a burst
    of readers catching up must queue, not break their streams."""
    redis_url = url or settings.require_engines()[1]
    pool = BlockingConnectionPool.from_url(
        redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        health_check_interval=30,
        # One quick retry absorbs a dropped idle connection; anything longer is an outage
        # that callers handle (fail open or closed) rather than wait out.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
    )
    return Redis(connection_pool=pool, decode_responses=False)


def create_request_redis(settings: Settings, *, url: str | None = None) -> Redis:
    """The request path's client: a deadline per call, no retry, behind a circuit breaker."""
    redis_url = url or settings.require_engines()[1]
    deadline = settings.redis_request_timeout_s
    options: dict[str, Any] = dict(parse_url(redis_url))
    base: type[AbstractConnection] = options.pop("connection_class", Connection)
    guarded = type(f"Guarded{base.__name__}", (_Guarded, base), {})
    # A burst waits for a free connection at most the deadline, then fails open or closed.
    pool = BlockingConnectionPool(
        **options,
        timeout=deadline,  # type: ignore[arg-type]  # typed int, used as a float delay
        connection_class=guarded,
        breaker=CircuitBreaker(
            failures=settings.redis_breaker_failures,
            reset_s=settings.redis_breaker_reset_s,
            name="request",
        ),
        max_connections=settings.redis_max_connections,
        socket_timeout=deadline,
        socket_connect_timeout=deadline,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(), retries=0),
    )
    return Redis(connection_pool=pool, decode_responses=False)
