"""One Redis Pub/Sub connection per process, fanning `user:{id}` events out to that
process's open WebSocket and SSE connections.

A connection per client would cost Redis a socket per phone; here each process subscribes
to a user's channel once, however many of that user's devices it serves, and drops it when
the last one leaves. Each client has a bounded queue: a consumer too slow to keep up is
cut off (and told so) instead of buffering without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from steward.platform.pubsub import user_channel
from steward.platform.resources import provide

log = structlog.get_logger(__name__)

DELIVERED = Counter("steward_realtime_events_total", "Events queued to realtime clients.")
DROPPED = Counter(
    "steward_realtime_slow_consumers_total", "Clients cut off because their queue was full."
)


@dataclass(frozen=True, slots=True)
class Published:
    """An event as every client receives it: decoded (to filter on), and its JSON as it was
    published, which sockets send as it is instead of each encoding it again."""

    event: dict[str, Any]
    text: str


_WAKE = Published({}, "")  # not an event: wakes a waiting `next` (see `wake`)


class Subscription:
    """One client's view of the hub: an async iterator of events, closed when dropped."""

    def __init__(self, hub: Hub, user_id: str, max_queue: int) -> None:
        self.user_id = user_id
        self.queue: asyncio.Queue[Published] = asyncio.Queue(maxsize=max_queue)
        self.dropped = False
        self._hub = hub

    def offer(self, published: Published) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(published)
            DELIVERED.inc()
        except asyncio.QueueFull:
            self.dropped = True
            DROPPED.inc()
            log.warning("realtime.slow_consumer_dropped", user_id=self.user_id)

    def wake(self) -> None:
        """Make a waiting `next` return None now (its client has gone, say); a full queue
        needs no waking."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(_WAKE)

    async def next(self, wait_s: float) -> Published | None:
        """The next event, or None after `wait_s` seconds without one (or when woken)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the event does, and the stream being stopped (a shutdown) goes on.
        try:
            async with asyncio.timeout(wait_s):
                published = await self.queue.get()
        except TimeoutError:
            return None
        return None if published is _WAKE else published

    async def close(self) -> None:
        await self._hub.unsubscribe(self)


class Hub:
    def __init__(self, redis: Redis, *, max_queue: int = 100) -> None:
        self._redis = redis
        self._max_queue = max_queue
        self._pubsub: PubSub | None = None
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def subscribe(self, user_id: str) -> Subscription:
        subscription = Subscription(self, user_id, self._max_queue)
        async with self._lock:
            first = not self._subscribers[user_id]
            self._subscribers[user_id].add(subscription)
            if first:
                await self._ensure_pubsub().subscribe(user_channel(user_id))
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="realtime-hub")
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        async with self._lock:
            listeners = self._subscribers.get(subscription.user_id)
            if listeners is None:
                return
            listeners.discard(subscription)
            if not listeners:
                del self._subscribers[subscription.user_id]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(user_channel(subscription.user_id))

    def _ensure_pubsub(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        return self._pubsub

    async def _read(self) -> None:
        pubsub = self._ensure_pubsub()
        while self._subscribers:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("realtime.pubsub_error", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                await self._resubscribe()
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            user_id = channel.removeprefix("user:")
            try:
                event = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            published = Published(event, message["data"].decode())
            for subscription in tuple(self._subscribers.get(user_id, ())):
                subscription.offer(published)

    async def _resubscribe(self) -> None:
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
            channels = [user_channel(user_id) for user_id in self._subscribers]
            if channels:
                with contextlib.suppress(RedisError, OSError):
                    await self._ensure_pubsub().subscribe(*channels)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]


provide(Hub, lambda resources: Hub(resources.redis,
                                    max_queue=resources.settings.realtime_queue_size))  # fmt: skip
