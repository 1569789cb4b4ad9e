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
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from steward.platform.resources import provide
from steward.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunEvent:
    event: str
    data: dict[str, Any]

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> RunEvent:
        return cls(event=fields[b"e"].decode(), data=orjson.loads(fields[b"d"]))


LOG_EVENTS = Counter(
    "steward_run_log_events_total",
    "Run events appended to the resumable run log (Redis streams), by outcome (written, failed).",
    ["outcome"],
)
_WRITTEN, _FAILED = LOG_EVENTS.labels("written"), LOG_EVENTS.labels("failed")
FOLLOWERS = Gauge(
    "steward_run_log_followers",
    "Readers following runs' logs live on this process (resumed SSE and WebSocket streams).",
    multiprocess_mode="livesum",
)


def stream_key(run_id: uuid.UUID | str) -> str:
    return f"run:{run_id}"


def cancel_key(run_id: uuid.UUID | str) -> str:
    return f"run:{run_id}:cancel"


Pending = tuple[uuid.UUID, RunEvent, str]  # (run, event, entry id or "*")

# Appends a batch of events: KEYS[i] gets ARGV's i-th (id, event, data, expiry) after the
# stream's length cap in ARGV[1]; an expiry of 0 leaves the key's as it is. Each entry's id
# is returned, or its error prefixed with "!" (one refused id must not lose the others).
_APPEND = """
local out = {}
for i = 1, #KEYS do
  local at = 2 + (i - 1) * 4
  local added = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], ARGV[at],
                            'e', ARGV[at + 1], 'd', ARGV[at + 2])
  if type(added) == 'table' and added.err then
    out[i] = '!' .. added.err
  else
    out[i] = added
    if ARGV[at + 3] ~= '0' then redis.call('EXPIRE', KEYS[i], ARGV[at + 3]) end
  end
end
return out
"""
_BATCH = 500  # events per script call: Redis runs a script without serving anyone else


class RunLog:
    """Appends and reads run events. A failed append is logged, not raised: the live reader
    has the event already (see EntryIds) and an answer must not die because Redis blinked.

    Runs executing here hand their events to `enqueue`: one writer task per process sends
    whatever every run queued meanwhile in one pipelined round trip, in order. Per-run
    writers cost a task switch and a round trip per token, for each of a hundred streams
    at twenty tokens a second."""

    def __init__(
        self, redis: Redis, *, ttl_s: int, maxlen: int, live_ttl_s: int, linger_s: float = 0.005
    ) -> None:
        self._redis = redis
        # How long the writer lets events gather before a round trip. Live readers are not
        # waiting for it (see EntryIds); readers elsewhere see events this much later.
        self._linger_s = linger_s
        self._ttl_s = ttl_s
        self._maxlen = maxlen
        # While a run is live its stream must outlast it even if the finishing EXPIRE is
        # never sent (a killed process): the longest a run may take, plus the normal TTL.
        self._live_ttl_s = live_ttl_s + ttl_s
        self._last_failure = 0.0
        self._queued: list[Pending] = []
        self._next: asyncio.Future[None] | None = None  # done when the queued are written
        self._inflight: asyncio.Future[None] | None = None  # the batch being written
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.cancel_poll_s = 0.5
        self._cancels: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._append = redis.register_script(_APPEND)
        self._expiries = {"run": self._live_ttl_s, "done": self._ttl_s}  # else left as it is

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RunLog:
        providers = settings.assistant_providers.values()
        longest = max([p.total_timeout_s for p in providers] + [300.0])
        return cls(redis, ttl_s=settings.run_stream_ttl_s, maxlen=settings.run_stream_maxlen,
                   live_ttl_s=int(longest))  # fmt: skip

    def enqueue(self, run_id: uuid.UUID, event: RunEvent, entry_id: str = "*") -> None:
        """Queue one append for the writer (`flush` waits for it; a failure is logged)."""
        loop = asyncio.get_running_loop()
        self._queued.append((run_id, event, entry_id))
        if self._next is None:
            self._next = loop.create_future()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write(), name="run-log")
        self._wake.set()

    async def _write(self) -> None:
        while True:
            if not self._queued:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            batch, self._queued = self._queued, []
            self._inflight, self._next = self._next, None
            try:
                await self._pipeline(batch)
            except Exception:  # a bug here must not stop every run's writes
                log.exception("assistant.run_log_write_failed", events=len(batch))
            finally:
                if self._inflight is not None and not self._inflight.done():
                    self._inflight.set_result(None)
                self._inflight = None

    async def flush(self) -> None:
        """Wait until everything queued so far has been sent (batches go in order)."""
        target = self._next or self._inflight
        if target is not None:
            await asyncio.shield(target)

    async def aclose(self) -> None:
        await self.flush()
        for task in (self._writer, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def append(self, run_id: uuid.UUID, event: RunEvent, entry_id: str = "*") -> str | None:
        """One event, written now (outside the writer)."""
        return (await self._pipeline([(run_id, event, entry_id)]))[0]

    async def _pipeline(self, batch: list[Pending]) -> list[str | None]:
        """Write `batch` in order in one round trip; the ids (None where writing failed)."""
        written: list[str | None] = []
        for start in range(0, len(batch), _BATCH):
            written.extend(await self._append_all(batch[start : start + _BATCH]))
        return written

    async def _append_all(self, batch: list[Pending]) -> list[str | None]:
        # One script call for the whole batch: the same XADDs as a pipeline, but one command
        # to encode and one reply to parse instead of one per event (the client's per-reply
        # overhead was most of the run log's CPU with 1,000 streams open).
        keys: list[str] = []
        args: list[Any] = [self._maxlen]
        for run_id, event, entry_id in batch:
            keys.append(stream_key(run_id))
            expiry = self._expiries.get(event.event, 0)
            args += (entry_id, event.event, orjson.dumps(event.data), expiry)
        try:
            replies = await self._append(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed(batch[0][0], exc)
            _FAILED.inc(len(batch))
            return [None] * len(batch)
        written: list[str | None] = []
        for (run_id, event, entry_id), reply in zip(batch, replies, strict=True):
            result = reply.decode() if isinstance(reply, bytes) else str(reply)
            if not result.startswith("!"):
                _WRITTEN.inc()
                written.append(result)
            elif entry_id != "*":
                # Someone else appended past our ids (they are assigned only for streams
                # nothing else writes to while the run lasts): keep the event, Redis's id.
                log.error("assistant.run_entry_id_refused", run_id=str(run_id),
                          error=result[1:])  # fmt: skip
                written.append(await self.append(run_id, event))
            else:
                self._failed(run_id, ResponseError(result[1:]))
                _FAILED.inc()
                written.append(None)
        return written

    def _failed(self, run_id: uuid.UUID, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_failure > 60:
            log.warning("assistant.run_log_failed", run_id=str(run_id), error=type(exc).__name__)
            self._last_failure = now

    async def read(self, run_id: uuid.UUID) -> list[RunEvent]:
        """Every event the stream holds, oldest first."""
        entries = await self._redis.xrange(stream_key(run_id))
        return [RunEvent.decode(fields) for _, fields in entries]

    async def ended_by(self, run_id: uuid.UUID, entry_id: str) -> bool:
        """Whether the run's `done` is its last entry, at or before `entry_id`."""
        last = await self._redis.xrevrange(stream_key(run_id), count=1)
        if not last:
            return False
        last_id, fields = last[0]
        return fields.get(b"e") == b"done" and not is_after(last_id.decode(), entry_id)

    async def exists(self, run_id: uuid.UUID) -> bool:
        return bool(await self._redis.exists(stream_key(run_id)))

    async def request_cancel(self, run_id: uuid.UUID) -> None:
        await self._redis.set(cancel_key(run_id), b"1", ex=self._live_ttl_s)

    async def cancel_asked(self, run_id: uuid.UUID) -> None:
        """Return once a cancel of `run_id` has been asked for, from any process. One poller
        checks every run waiting here, in one pipelined round trip per interval (a poll per
        run was a Redis call per run every half second: 2,000 a second at 1,000 streams)."""
        loop = asyncio.get_running_loop()
        waiter = self._cancels.get(run_id)
        if waiter is None or waiter.done():
            waiter = self._cancels[run_id] = loop.create_future()
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll_cancels(), name="run-cancels")
        try:
            await waiter
        finally:
            if self._cancels.get(run_id) is waiter:
                del self._cancels[run_id]

    async def _poll_cancels(self) -> None:
        while self._cancels:
            await asyncio.sleep(self.cancel_poll_s)
            runs = [run_id for run_id, waiter in self._cancels.items() if not waiter.done()]
            if not runs:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for run_id in runs:
                        pipe.exists(cancel_key(run_id))
                    flags = await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - Redis blinked, or worse: poll again
                self._failed(runs[0], exc)
                continue
            for run_id, flag in zip(runs, flags, strict=True):
                waiter = self._cancels.get(run_id)
                if flag and waiter is not None and not waiter.done():
                    waiter.set_result(None)


class EntryIds:
    """Stream entry ids assigned in this process, for a stream only it appends to while the
    run lasts (a run started here for a live reader): the reader is handed each event with
    its id at once, and the XADD that stores it under that id is not on the reader's path.
    Ids follow Redis's own scheme (milliseconds-sequence), never going backwards."""

    def __init__(self) -> None:
        self._ms = 0
        self._seq = 0

    def next(self) -> str:
        now = time.time_ns() // 1_000_000
        if now > self._ms:
            self._ms, self._seq = now, 0
        else:
            self._seq += 1
        return f"{self._ms}-{self._seq}"


def is_after(a: str, b: str) -> bool:
    """Whether stream id `a` comes after `b`."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


class Follower:
    """One reader's view of a run: catch-up entries first, then live ones from the hub, in
    lists (what one read of the log brought: a reader that is behind is woken once for
    many entries, not once per entry)."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[list[tuple[str, RunEvent]]] = asyncio.Queue()


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
        FOLLOWERS.inc()
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
        if follower in followers:
            followers.discard(follower)
            FOLLOWERS.dec()
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
        fresh: list[tuple[str, RunEvent]] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if not is_after(entry_id, self._heads[run_id]):
                continue
            self._heads[run_id] = entry_id
            try:
                fresh.append((entry_id, RunEvent.decode(fields)))
            except (KeyError, ValueError):
                # One unreadable entry must not stop the loop every reader depends on.
                log.warning("assistant.run_event_unreadable", run_id=str(run_id), id=entry_id)
        if fresh:
            for follower in self._followers.get(run_id, ()):
                follower.queue.put_nowait(fresh)  # shared: readers only read it

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


provide(RunLog, lambda resources: RunLog.from_settings(resources.redis, resources.settings))


async def forget_user(session: Any, user_id: uuid.UUID, resources: Any) -> None:
    """Account deletion (accounts/hooks.py): the account's run logs and cancel flags leave
    Redis once its rows are gone (they would expire, but deletion means now)."""
    from sqlalchemy import select

    from steward.assistant.models import Run
    from steward.platform.transactions import after_commit

    run_ids = (await session.execute(select(Run.id).where(Run.owner_id == user_id))).scalars()
    keys = [key for run_id in run_ids for key in (stream_key(run_id), cancel_key(run_id))]
    if not keys:
        return

    async def drop() -> None:
        for start in range(0, len(keys), 500):
            await resources.redis.delete(*keys[start : start + 500])

    after_commit(session).call(drop)
