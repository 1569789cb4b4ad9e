"""The per-process resources the app opens at start and closes at shutdown."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from steward.assistant.resilience import Providers
from steward.assistant.streams import RunLog
from steward.assistant.usage import UsageMeter
from steward.notifications.hub import Hub
from steward.platform import db
from steward.platform.cache import Cache, flush_invalidations
from steward.platform.proxies import Network, parse_networks
from steward.platform.pubsub import flush_pending
from steward.platform.ratelimit import Policy, RateLimiter
from steward.platform.redis import create_redis, create_request_redis
from steward.settings import Settings


@dataclass(frozen=True, slots=True)
class RateLimitPolicies:
    anonymous: Policy
    authenticated: Policy
    login: Policy
    register: Policy
    assistant: Policy

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitPolicies:
        fail_open = settings.rate_limit_fail_open
        return cls(
            anonymous=Policy.parse("anonymous", settings.rate_limit_anonymous, fail_open=fail_open),
            authenticated=Policy.parse(
                "authenticated", settings.rate_limit_authenticated, fail_open=fail_open
            ),
            login=Policy.parse(
                "login", settings.rate_limit_login, fail_open=settings.rate_limit_login_fail_open
            ),
            register=Policy.parse(
                "register",
                settings.rate_limit_register,
                fail_open=settings.rate_limit_login_fail_open,
            ),
            assistant=Policy.parse("assistant", settings.rate_limit_assistant, fail_open=fail_open),
        )


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    request_redis: Redis  # a short deadline per call and a circuit breaker (platform/redis.py)
    cache: Cache
    limiter: RateLimiter
    policies: RateLimitPolicies
    trusted_proxies: tuple[Network, ...]
    hub: Hub
    providers: Providers
    run_log: RunLog
    usage: UsageMeter = field(init=False)

    def __post_init__(self) -> None:
        self.usage = UsageMeter(self.transaction)

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        database_url, redis_url = settings.require_engines()
        engine = db.create_engine(settings, url=database_url)
        redis = create_redis(settings, url=redis_url)
        request_redis = create_request_redis(settings, url=redis_url)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=db.create_sessionmaker(engine),
            redis=redis,
            request_redis=request_redis,
            cache=Cache(
                request_redis,
                enabled=settings.cache_enabled,
                local_ttl_s=settings.cache_local_ttl_s,
            ),
            limiter=RateLimiter(request_redis, max_lease=settings.rate_limit_max_lease),
            policies=RateLimitPolicies.from_settings(settings),
            trusted_proxies=parse_networks(settings.trusted_proxies),
            hub=Hub(redis, max_queue=settings.realtime_queue_size),
            providers=Providers(settings),
            run_log=RunLog.from_settings(redis, settings),
        )

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One unit of work outside a request's session (tool calls, runs, tasks): commits,
        then publishes the change events and cache invalidations it queued."""
        return db.session_scope(self.sessionmaker, after_commit=self._publish)

    async def _publish(self, session: AsyncSession) -> None:
        await flush_invalidations(session, self.cache)
        await flush_pending(session, self.request_redis)

    async def close(self) -> None:
        try:
            await self.usage.aclose()
            await self.run_log.aclose()
            await self.providers.aclose()
            await self.hub.close()
            await self.redis.aclose()
            await self.request_redis.aclose()
        finally:
            await self.engine.dispose()
