"""The cache: single-flight recomputation, stale serving, negative entries, jitter,
invalidation, and Redis outages that bypass instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from steward.platform.cache import MISSING, Cache
from steward.platform.redis import create_redis
from steward.settings import Settings
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


# --- the near cache: copies in each process, kept coherent over Pub/Sub ---------------------


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Poll: the condition is set by a background task with no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def following(cache: Cache) -> AsyncIterator[Cache]:
    """Run the cache's invalidation follower, as the app's lifespan does."""
    task = asyncio.create_task(cache.follow_invalidations(retry_s=0.05))
    try:
        await until(lambda: cache.near is not None and cache.near.live)
        yield cache
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_near_cache_serves_repeat_reads_without_redis(
    redis: Redis, settings: Settings
) -> None:
    # The app's client with a short socket timeout: a quiet invalidation channel must not
    # count as a broken one (which would empty the near cache and turn it off).
    client = create_redis(settings.model_copy(update={"redis_socket_timeout_s": 0.2}))
    async with following(Cache(client, local_ttl_s=30)) as cache:
        compute = Counter("v", 0)
        assert await cache.get_or_compute("ns", "k", compute, ttl_s=60) == "v"
        await asyncio.sleep(1.5)
        assert cache.near is not None and cache.near.live
        await redis.flushdb()  # the Redis entry is gone: only the local copy can answer
        assert await cache.get_or_compute("ns", "k", compute, ttl_s=60) == "v"
        assert compute.calls == 1
    await client.aclose()


async def test_an_invalidation_anywhere_reaches_every_process_at_once(redis: Redis) -> None:
    other_client = Redis(**redis.get_connection_kwargs())  # another process' connections
    async with (
        following(Cache(redis, local_ttl_s=30)) as here,
        following(Cache(other_client, local_ttl_s=30)) as there,
    ):
        assert await here.get_or_compute("user:1", "k", Counter("old", 0), ttl_s=60) == "old"
        assert await there.get_or_compute("user:1", "k", Counter("x", 0), ttl_s=60) == "old"
        await there.invalidate("user:1")
        # The writer's own process reads its write at once; the other one as soon as the
        # announcement arrives (a Pub/Sub round trip), never later than that.
        assert await there.get_or_compute("user:1", "k", Counter("new", 0), ttl_s=60) == "new"
        await until(lambda: here.near is not None and here.near.get("user:1", "k") is None)
        assert await here.get_or_compute("user:1", "k", Counter("x", 0), ttl_s=60) == "new"
    await other_client.aclose()


async def test_a_read_overtaken_by_an_invalidation_is_not_kept(redis: Redis) -> None:
    async with following(Cache(redis, local_ttl_s=30)) as cache:
        near = cache.near
        assert near is not None

        async def slow_compute() -> object:
            # While this read is in flight, another process changes the data.
            await cache.invalidate("ns")
            return "read-before-the-change"

        assert await cache.get_or_compute("ns", "k", slow_compute, ttl_s=60) == (
            "read-before-the-change"
        )
        assert near.get("ns", "k") is None  # not kept locally: the namespace moved on
        fresh = Counter("after", 0)
        assert await cache.get_or_compute("ns", "k", fresh, ttl_s=60) == "after"
        assert fresh.calls == 1


async def test_near_cache_is_off_while_invalidations_cannot_be_followed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.2)
    cache = Cache(down, local_ttl_s=30)
    task = asyncio.create_task(cache.follow_invalidations(retry_s=0.05))
    await asyncio.sleep(0.5)
    assert cache.near is not None and not cache.near.live
    compute = Counter("computed", 0)
    await cache.get_or_compute("ns", "k", compute, ttl_s=60)
    await cache.get_or_compute("ns", "k", compute, ttl_s=60)
    assert compute.calls == 2  # nothing kept locally
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await down.aclose()


async def test_one_caller_reads_a_cold_or_expired_key_while_the_others_wait_or_use_it(
    redis: Redis,
) -> None:
    from prometheus_client import REGISTRY

    def lookups(result: str) -> float:
        labels = {"kind": "refresh", "result": result}
        return REGISTRY.get_sample_value("steward_cache_lookups_total", labels) or 0.0

    async with following(Cache(redis, local_ttl_s=0.2)) as cache:
        # Cold: fifty callers at once share one read (and one computation).
        compute, misses, local = Counter("v", 0), lookups("miss"), lookups("local")
        cold = await asyncio.gather(
            *(cache.get_or_compute("ns", "k", compute, ttl_s=60, kind="refresh")
              for _ in range(50))
        )  # fmt: skip
        assert cold == ["v"] * 50
        assert compute.calls == 1
        assert (lookups("miss") - misses, lookups("local") - local) == (1, 49)
        await asyncio.sleep(0.3)  # the local copy is past its age; the Redis entry is fresh
        from_redis, local = lookups("hit"), lookups("local")
        results = await asyncio.gather(
            *(cache.get_or_compute("ns", "k", Counter("x", 0), ttl_s=60, kind="refresh")
              for _ in range(50))
        )  # fmt: skip
        assert results == ["v"] * 50
        assert lookups("hit") - from_redis == 1  # one round trip, not fifty
        assert lookups("local") - local == 49


def test_near_cache_memory_is_bounded() -> None:
    from steward.platform.cache import NearCache

    near = NearCache(max_age_s=60, max_namespaces=3, max_per_namespace=4)
    near.reset(live=True)
    fresh = time.time() + 60
    for n in range(5):
        for k in range(10):
            near.put(f"ns{n}", f"k{k}", version=0, epoch=near.epoch, fresh_until=fresh, value=k)
    assert [near.get("ns4", f"k{k}") is not None for k in range(10)] == [False] * 6 + [True] * 4
    assert near.get("ns0", "k9") is None and near.get("ns1", "k9") is None  # evicted
    assert near.get("ns2", "k9") is not None
