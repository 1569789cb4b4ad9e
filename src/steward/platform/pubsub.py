"""Live events over Redis Pub/Sub, published only after the transaction that caused them
commits (a rolled-back write never announces itself)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

log = structlog.get_logger(__name__)

_PENDING_KEY = "steward.pending_events"


def user_channel(user_id: object) -> str:
    return f"user:{user_id}"


def publish_after_commit(session: AsyncSession, channel: str, event: dict[str, Any]) -> None:
    """Queue `event` on `channel`; sent by `flush_pending` once `session` commits."""
    session.info.setdefault(_PENDING_KEY, []).append((channel, event))


async def flush_pending(session: AsyncSession, redis: Redis) -> None:
    """Publish what the committed transaction queued. Pub/Sub is best effort by design: the
    data is already committed, so a Redis outage loses the live notice, not the change."""
    pending: list[tuple[str, dict[str, Any]]] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for channel, event in pending:
                pipe.publish(channel, orjson.dumps(event, default=str))
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("pubsub.publish_failed", events=len(pending), error=type(exc).__name__)
