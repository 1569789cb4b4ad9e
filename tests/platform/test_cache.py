"""The cache: single-flight recomputation, stale serving, negative entries, jitter,
invalidation, and Redis outages that bypass instead of failing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from steward.platform.cache import MISSING, Cache
from tests.engines import EngineSet


@pytest.fixture
async def redis(engines: EngineSet, clean_state: None) -> AsyncIterator[Redis]:
    client = Redis.from_url(engines.redis_url)
    yield client
    await client.aclose()


class Counter:
    def __init__(self, value: object = "v", delay: float = 0.05) -> None:
        self.calls = 0
        self.value = value
        self.delay = delay

    async def __call__(self) -> object:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return self.value


async def test_expired_hot_key_is_recomputed_once_under_200_readers(redis: Redis) -> None:
    cache = Cache(redis)
    compute = Counter("fresh")
    await cache.get_or_compute("ns", "hot", Counter("old", 0), ttl_s=0.2, stale_s=30)
    await asyncio.sleep(0.5)  # past the fresh window (0.2 s +- jitter), within the stale one
    results = await asyncio.gather(
        *(cache.get_or_compute("ns", "hot", compute, ttl_s=60) for _ in range(200))
    )
    assert compute.calls == 1
    assert set(results) <= {"old", "fresh"}
    assert await cache.get_or_compute("ns", "hot", compute, ttl_s=60) == "fresh"
    assert compute.calls == 1


async def test_cold_key_is_computed_once_while_others_wait(redis: Redis) -> None:
    cache = Cache(redis)
    compute = Counter("v", delay=0.1)
    results = await asyncio.gather(
        *(cache.get_or_compute("ns", "cold", compute, ttl_s=60) for _ in range(200))
    )
    assert compute.calls == 1
    assert results == ["v"] * 200


async def test_missing_values_are_cached_briefly(redis: Redis) -> None:
    cache = Cache(redis)
    compute = Counter(MISSING, delay=0)
    for _ in range(5):
        assert (
            await cache.get_or_compute("ns", "ghost", compute, ttl_s=60, negative_ttl_s=0.2)
            is MISSING
        )
    assert compute.calls == 1
    await asyncio.sleep(0.5)
    await cache.get_or_compute("ns", "ghost", compute, ttl_s=60, negative_ttl_s=0.2)
    assert compute.calls == 2


async def test_invalidation_moves_the_namespace(redis: Redis) -> None:
    cache = Cache(redis)
    first, second = Counter("a", 0), Counter("b", 0)
    assert await cache.get_or_compute("user:1", "k", first, ttl_s=60) == "a"
    assert await cache.get_or_compute("user:2", "k", second, ttl_s=60) == "b"
    await cache.invalidate("user:1")
    assert await cache.get_or_compute("user:1", "k", Counter("a2", 0), ttl_s=60) == "a2"
    assert await cache.get_or_compute("user:2", "k", Counter("x", 0), ttl_s=60) == "b"


async def test_ttls_carry_jitter(redis: Redis) -> None:
    cache = Cache(redis, jitter=0.1)
    ttls = {cache._ttl(100) for _ in range(200)}
    assert len(ttls) > 5
    assert min(ttls) >= 90
    assert max(ttls) <= 110


async def test_redis_down_means_bypass_not_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2)
    cache = Cache(down)
    compute = Counter("computed", 0)
    assert await cache.get_or_compute("ns", "k", compute, ttl_s=60) == "computed"
    assert await cache.get_or_compute("ns", "k", compute, ttl_s=60) == "computed"
    assert compute.calls == 2
    await cache.invalidate("ns")  # logged, not raised
    await down.aclose()
