"""Live events over Redis Pub/Sub, published only after the transaction that caused them
commits (a rolled-back write never announces itself).

Each event is also kept, for a while, in the channel's log (a Redis Stream): its entry id is
the event's `event_id`, and a device that comes back with the last id it saw is given what
it missed (`missed`), or told to resync when that is gone. The append and the publish are
one script, so live and logged events carry the same ids in the same order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger(__name__)


def user_channel(user_id: object) -> str:
    return f"user:{user_id}"


def log_key(channel: str) -> str:
    return f"{channel}:log"


# The event (a JSON object) gets its log entry's id as `event_id` before it is published.
_APPEND_AND_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[2], '{"event_id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
"""
_ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True, slots=True)
class Retention:
    seconds: int
    entries: int


async def publish_all(
    redis: Redis, events: list[tuple[str, dict[str, Any]]], retention: Retention
) -> None:
    """Log and publish committed changes' events (queued with `after_commit(session).publish`)
    in one round trip. Best effort by design: the data is already committed, so a Redis outage
    loses the live notice (a device catching up is told to resync), not the change."""
    if not events:
        return
    script = redis.register_script(_APPEND_AND_PUBLISH)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for channel, event in events:
                body = orjson.dumps({k: v for k, v in event.items() if k != "event_id"},
                                    default=str)  # fmt: skip
                limits = [retention.entries, retention.seconds * 1000]
                await script(keys=[log_key(channel)], args=[body, channel, *limits], client=pipe)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("pubsub.publish_failed", events=len(events), error=type(exc).__name__)


def _entry(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def is_newer(entry_id: str, than: str) -> bool:
    return _entry(entry_id) > _entry(than)


async def missed(
    redis: Redis, channel: str, after: str, *, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The channel's events after entry `after`, oldest first, and whether some are gone
    (trimmed or expired, or `after` is not an id the log could have given): then the device
    must resync instead of trusting what it holds."""
    if not _ENTRY_ID.match(after):
        return [], True
    key = log_key(channel)
    try:
        info = await redis.xinfo_stream(key)
    except ResponseError:  # no log: expired, or nothing was ever published
        return [], True
    deleted = info.get("max-deleted-entry-id") or b"0-0"
    deleted = deleted.decode() if isinstance(deleted, bytes) else str(deleted)
    if is_newer(deleted, after):
        return [], True
    entries = await redis.xrange(key, min=f"({after}", max="+", count=limit)
    events = []
    for entry_id, fields in entries:
        event = orjson.loads(fields[b"e"])
        event["event_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        events.append(event)
    return events, False
