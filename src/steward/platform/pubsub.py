"""Live events over Redis Pub/Sub, published only after the transaction that caused them
commits (a rolled-back write never announces itself)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)


def user_channel(user_id: object) -> str:
    return f"user:{user_id}"


async def publish_all(redis: Redis, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Publish committed changes' events (queued with `after_commit(session).publish`) in one
    round trip. Pub/Sub is best effort by design: the data is already committed, so a Redis
    outage loses the live notice, not the change."""
    if not events:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for channel, event in events:
                pipe.publish(channel, orjson.dumps(event, default=str))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("pubsub.publish_failed", events=len(events), error=type(exc).__name__)
