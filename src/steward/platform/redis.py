"""Redis (or Valkey) client: one pooled asyncio client per process, with explicit timeouts."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from steward.settings import Settings


def create_redis(settings: Settings, *, url: str | None = None) -> Redis:
    redis_url = url or settings.require_engines()[1]
    client: Redis = Redis.from_url(
        redis_url,
        max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        health_check_interval=30,
        # One quick retry absorbs a dropped idle connection; anything longer is an outage
        # that callers handle (fail open or closed) rather than wait out.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        decode_responses=False,
    )
    return client
