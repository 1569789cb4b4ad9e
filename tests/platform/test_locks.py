"""Distributed locks: one holder at a time, only the owner releases, TTL and extension."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import LockNotOwnedError

from steward.platform.locks import LockUnavailable, hold, make_lock
from tests.engines import EngineSet


@pytest.fixture
async def redis(engines: EngineSet, clean_state: None) -> AsyncIterator[Redis]:
    client = Redis.from_url(engines.redis_url)
    yield client
    await client.aclose()


async def test_one_holder_at_a_time(redis: Redis) -> None:
    async with hold(redis, "job", ttl_s=5):
        with pytest.raises(LockUnavailable):
            async with hold(redis, "job", ttl_s=5):
                pass
    async with hold(redis, "job", ttl_s=5):
        pass


async def test_only_the_owner_releases(redis: Redis) -> None:
    owner = make_lock(redis, "owned", ttl_s=5)
    intruder = make_lock(redis, "owned", ttl_s=5)
    assert await owner.acquire(blocking=False)
    with pytest.raises(LockNotOwnedError):
        await intruder.do_release(b"not-the-token")
    assert await owner.locked()
    await owner.release()
    assert not await owner.locked()


async def test_ttl_frees_a_crashed_holder_and_extension_keeps_it(redis: Redis) -> None:
    crashed = make_lock(redis, "ttl", ttl_s=0.3)
    assert await crashed.acquire(blocking=False)
    await asyncio.sleep(0.5)
    survivor = make_lock(redis, "ttl", ttl_s=0.3)
    assert await survivor.acquire(blocking=False)
    await survivor.extend(2)
    await asyncio.sleep(0.5)
    assert await survivor.owned()
    await survivor.release()


async def test_waiting_acquire_gets_it_when_released(redis: Redis) -> None:
    async def release_later() -> None:
        await asyncio.sleep(0.2)
        await first.release()

    first = make_lock(redis, "wait", ttl_s=5)
    assert await first.acquire(blocking=False)
    task = asyncio.create_task(release_later())
    async with hold(redis, "wait", ttl_s=5, wait_s=2):
        pass
    await task
