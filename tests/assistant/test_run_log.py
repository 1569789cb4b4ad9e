"""The run event log: ids assigned in process, every run's events in one pipeline, what
happens when Redis refuses an id, and one poll for every run's cancel flag."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from steward.assistant.streams import (
    EntryIds,
    Pending,
    RunEvent,
    RunLog,
    cancel_key,
    is_after,
    stream_key,
)
from tests.conftest import LogCapture
from tests.engines import EngineSet


@pytest.fixture
async def redis(engines: EngineSet) -> AsyncIterator[Redis]:
    client = Redis.from_url(engines.redis_url)
    yield client
    await client.aclose()


def new_log(redis: Redis) -> RunLog:
    return RunLog(redis, ttl_s=60, maxlen=1000, live_ttl_s=60)


def test_entry_ids_only_go_forward() -> None:
    ids = EntryIds()
    issued = [ids.next() for _ in range(2000)]  # several share a millisecond
    assert all(is_after(b, a) for a, b in itertools.pairwise(issued))
    assert len({i.split("-")[0] for i in issued}) < len(issued)


async def test_every_run_queued_meanwhile_goes_in_one_round_trip(redis: Redis) -> None:
    log = new_log(redis)
    runs = [uuid.uuid4() for _ in range(3)]
    ids = {run: EntryIds() for run in runs}
    expected: dict[uuid.UUID, list[str]] = {run: [] for run in runs}
    calls_before = await _xadd_calls(redis)
    batches = _record_batches(log)
    for n in range(5):
        for run in runs:
            entry_id = ids[run].next()
            expected[run].append(entry_id)
            log.enqueue(run, RunEvent("token", {"delta": f"{n}"}), entry_id)
    await log.flush()
    for run in runs:
        entries = await redis.xrange(stream_key(run))
        assert [i.decode() for i, _ in entries] == expected[run]
        assert [RunEvent.decode(f).data["delta"] for _, f in entries] == [str(n) for n in range(5)]
    assert await _xadd_calls(redis) - calls_before == 15
    # Queued before the writer first ran: one pipeline for all fifteen.
    assert batches == [15]
    await log.aclose()
    await redis.delete(*(stream_key(run) for run in runs))


async def test_a_refused_id_keeps_the_event_under_an_id_redis_picks(
    redis: Redis, logs: LogCapture
) -> None:
    log = new_log(redis)
    run = uuid.uuid4()
    # Something else wrote to the stream past the ids this process would assign.
    await redis.xadd(
        stream_key(run), {"e": b"token", "d": b'{"delta":"other"}'}, id="9999999999999-0"
    )
    log.enqueue(run, RunEvent("token", {"delta": "ours"}), EntryIds().next())
    await log.flush()
    entries = await redis.xrange(stream_key(run))
    assert [RunEvent.decode(f).data["delta"] for _, f in entries] == ["other", "ours"]
    assert is_after(entries[-1][0].decode(), "9999999999999-0")
    assert "assistant.run_entry_id_refused" in logs.text
    await log.aclose()
    await redis.delete(stream_key(run))


async def test_flush_waits_for_the_batch_in_flight(redis: Redis) -> None:
    log = new_log(redis)
    run = uuid.uuid4()
    ids = EntryIds()
    log.enqueue(run, RunEvent("run", {"run_id": str(run)}), ids.next())
    await asyncio.sleep(0)  # the writer has taken the batch; it is being written
    await log.flush()
    assert await redis.xlen(stream_key(run)) == 1
    assert 0 < await redis.ttl(stream_key(run)) <= 120
    await log.aclose()
    await redis.delete(stream_key(run))


async def test_one_poller_tells_each_waiting_run_of_its_own_cancel(redis: Redis) -> None:
    log = new_log(redis)
    log.cancel_poll_s = 0.05
    runs = [uuid.uuid4() for _ in range(5)]
    waiting = {run: asyncio.ensure_future(log.cancel_asked(run)) for run in runs}
    await asyncio.sleep(0.15)
    assert not any(task.done() for task in waiting.values())
    await redis.set(cancel_key(runs[2]), b"1", ex=10)
    await asyncio.wait_for(waiting[runs[2]], 2)
    await asyncio.sleep(0.15)
    assert [run for run, task in waiting.items() if task.done()] == [runs[2]]
    for task in waiting.values():
        task.cancel()
    await asyncio.gather(*waiting.values(), return_exceptions=True)
    assert not log._cancels  # nobody left waiting: the poller stops
    await log.aclose()
    await redis.delete(cancel_key(runs[2]))


async def _xadd_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


def _record_batches(log: RunLog) -> list[int]:
    """The size of each batch the writer sends (one pipelined round trip each)."""
    sizes: list[int] = []
    send = log._pipeline

    async def recorded(batch: list[Pending]) -> list[str | None]:
        sizes.append(len(batch))
        return await send(batch)

    log._pipeline = recorded  # type: ignore[method-assign]
    return sizes
