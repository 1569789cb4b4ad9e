"""A run's event log: a Redis Stream `run:{id}` that every reader, in any process, can replay
from the start or from after an entry id (the SSE `id:`), plus the cross-process cancel flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunEvent:
    event: str
    data: dict[str, Any]

    def encode(self) -> dict[str, bytes]:
        return {"e": self.event.encode(), "d": orjson.dumps(self.data)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> RunEvent:
        return cls(event=fields[b"e"].decode(), data=orjson.loads(fields[b"d"]))


def stream_key(run_id: uuid.UUID | str) -> str:
    return f"run:{run_id}"


def cancel_key(run_id: uuid.UUID | str) -> str:
    return f"run:{run_id}:cancel"


class RunLog:
    """Appends and reads run events. A failed append is logged and the event still goes to
    the live reader (without an id): an answer must not die because Redis blinked."""

    def __init__(self, redis: Redis, *, ttl_s: int, maxlen: int, live_ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._maxlen = maxlen
        # While a run is live its stream must outlast it even if the finishing EXPIRE is
        # never sent (a killed process): the longest a run may take, plus the normal TTL.
        self._live_ttl_s = live_ttl_s + ttl_s
        self._last_failure = 0.0

    async def append(self, run_id: uuid.UUID, event: RunEvent) -> str | None:
        key = stream_key(run_id)
        try:
            if event.event in ("run", "done"):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(key, event.encode(), maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                    pipe.expire(key, self._ttl_s if event.event == "done" else self._live_ttl_s)
                    entry_id, _ = await pipe.execute()
            else:
                entry_id = await self._redis.xadd(
                    key,
                    event.encode(),  # type: ignore[arg-type]
                    maxlen=self._maxlen,
                    approximate=True,
                )
        except (RedisError, OSError) as exc:
            self._failed(run_id, exc)
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def append_many(self, run_id: uuid.UUID, events: list[RunEvent]) -> list[str | None]:
        """Several events in one round trip, in order; their ids (None where writing failed)."""
        if len(events) == 1:
            return [await self.append(run_id, events[0])]
        key = stream_key(run_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(key, event.encode(), maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                    if event.event in ("run", "done"):
                        pipe.expire(key, self._ttl_s if event.event == "done" else self._live_ttl_s)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(run_id, exc)
            return [None] * len(events)
        ids = [r for r in results if isinstance(r, bytes | str)]
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def _failed(self, run_id: uuid.UUID, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_failure > 60:
            log.warning("assistant.run_log_failed", run_id=str(run_id), error=type(exc).__name__)
            self._last_failure = now

    async def read(self, run_id: uuid.UUID) -> list[RunEvent]:
        """Every event the stream holds, oldest first."""
        entries = await self._redis.xrange(stream_key(run_id))
        return [RunEvent.decode(fields) for _, fields in entries]

    async def exists(self, run_id: uuid.UUID) -> bool:
        return bool(await self._redis.exists(stream_key(run_id)))

    async def request_cancel(self, run_id: uuid.UUID) -> None:
        await self._redis.set(cancel_key(run_id), b"1", ex=self._live_ttl_s)

    async def cancel_requested(self, run_id: uuid.UUID) -> bool:
        return bool(await self._redis.exists(cancel_key(run_id)))


def is_after(a: str, b: str) -> bool:
    """Whether stream id `a` comes after `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


class Follower:
    """One reader's view of a run: catch-up entries first, then live ones from the hub."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[tuple[str, RunEvent]] = asyncio.Queue()


class RunFollowers:
    """Every live reader of every run in this process, fed by one loop: a single blocking
    XREAD over all followed streams, instead of one blocking XREAD (and one pooled Redis
    connection) per reader. Written here because the Redis clients offer no such fan-in.

    A reader joins with the id it has seen; it is handed the entries between that id and
    the loop's position with one XRANGE, and everything after from the loop, so nothing is
    missed or repeated."""

    def __init__(self, redis: Redis, *, block_ms: int = 100) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._heads: dict[uuid.UUID, str] = {}
        self._followers: dict[uuid.UUID, set[Follower]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def follow(
        self, run_id: uuid.UUID, after: str
    ) -> tuple[Follower, list[tuple[str, RunEvent]]]:
        """Register a reader that has seen up to `after`; returns it with the entries it must
        see before those its queue will receive (which may repeat ones it has: skip them)."""
        follower = Follower(run_id)
        head = self._heads.setdefault(run_id, after)  # a run nobody follows starts here
        self._followers.setdefault(run_id, set()).add(follower)
        self._ensure_running()
        self._wake.set()
        if not is_after(head, after):
            return follower, []
        entries = await self._redis.xrange(stream_key(run_id), min=f"({after}", max=head)
        return follower, [(i.decode(), RunEvent.decode(f)) for i, f in entries]

    def leave(self, follower: Follower) -> None:
        followers = self._followers.get(follower.run_id)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[follower.run_id]
            self._heads.pop(follower.run_id, None)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="run-followers")

    async def _loop(self) -> None:
        while True:
            if not self._heads:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams: dict[Any, Any] = {
                stream_key(run_id): head for run_id, head in self._heads.items()
            }
            try:
                response = await self._redis.xread(streams, count=500, block=self._block_ms)
            except (RedisError, OSError) as exc:
                log.warning("assistant.followers_read_failed", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            for key, entries in response or ():
                run_id = uuid.UUID((key.decode() if isinstance(key, bytes) else key)[4:])
                if run_id in self._heads:  # else everyone left while the read was in flight
                    self._dispatch(run_id, entries)

    def _dispatch(self, run_id: uuid.UUID, entries: list[Any]) -> None:
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if not is_after(entry_id, self._heads[run_id]):
                continue
            self._heads[run_id] = entry_id
            try:
                event = RunEvent.decode(fields)
            except (KeyError, ValueError):
                # One unreadable entry must not stop the loop every reader depends on.
                log.warning("assistant.run_event_unreadable", run_id=str(run_id), id=entry_id)
                continue
            for follower in self._followers.get(run_id, ()):
                follower.queue.put_nowait((entry_id, event))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
