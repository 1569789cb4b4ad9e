"""The per-process resources the app opens at start and closes at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from steward.platform import db
from steward.platform.redis import create_redis
from steward.settings import Settings


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        database_url, redis_url = settings.require_engines()
        engine = db.create_engine(settings, url=database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=db.create_sessionmaker(engine),
            redis=create_redis(settings, url=redis_url),
        )

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        finally:
            await self.engine.dispose()
