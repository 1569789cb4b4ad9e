"""The per-process resources the app, a worker or a command opens at start and closes at
shutdown: the platform's own (database, Redis, cache, limits), and the parts domains add.

A domain adds a per-process object (the assistant's providers and run log, the
notifications hub...) with `provide(Kind, build)` when its module is imported; `open()`
builds every part after the platform's own and `close()` closes them, last built first.
The platform thus knows no domain: the arrows point down only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from steward.platform import db
from steward.platform.cache import Cache
from steward.platform.proxies import Network, parse_networks
from steward.platform.pubsub import Retention, publish_all
from steward.platform.ratelimit import RateLimiter, RateLimitPolicy
from steward.platform.redis import create_redis, create_request_redis
from steward.platform.transactions import AfterCommit, Dispatcher, open_transaction
from steward.settings import Settings


@dataclass(frozen=True, slots=True)
class RateLimitPolicies:
    anonymous: RateLimitPolicy
    authenticated: RateLimitPolicy
    login: RateLimitPolicy
    register: RateLimitPolicy
    assistant: RateLimitPolicy
    email: RateLimitPolicy

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitPolicies:
        parse = RateLimitPolicy.parse
        fail_open, sign_in_fail_open = (
            settings.rate_limit_fail_open, settings.rate_limit_login_fail_open
        )  # fmt: skip
        return cls(
            anonymous=parse("anonymous", settings.rate_limit_anonymous, fail_open=fail_open),
            authenticated=parse(
                "authenticated", settings.rate_limit_authenticated, fail_open=fail_open
            ),
            login=parse("login", settings.rate_limit_login, fail_open=sign_in_fail_open),
            register=parse("register", settings.rate_limit_register, fail_open=sign_in_fail_open),
            assistant=parse("assistant", settings.rate_limit_assistant, fail_open=fail_open),
            # Emails cost money and reach other people's inboxes: closed when Redis is away.
            email=parse("email", settings.rate_limit_email, fail_open=False),
        )


T = TypeVar("T")
_PARTS: dict[type[Any], Callable[[Resources], Any]] = {}


def provide(kind: type[T], build: Callable[[Resources], T]) -> None:
    """Have every Resources opened from now on hold `build(resources)`, found by `kind`. The
    part is closed with its `aclose()` (or `close()`) coroutine when the resources close."""
    _PARTS[kind] = build


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
    parts: dict[type[Any], Any] = field(default_factory=dict)

    def get(self, kind: type[T]) -> T:
        """The part a domain provided as `kind` (built now if its module was imported after
        these resources were opened, as a worker's task modules may be)."""
        part = self.parts.get(kind)
        if part is None:
            part = self.parts[kind] = _PARTS[kind](self)
        return cast(T, part)

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        database_url, redis_url = settings.require_engines()
        engine = db.create_engine(settings, url=database_url)
        redis = create_redis(settings, url=redis_url)
        request_redis = create_request_redis(settings, url=redis_url)
        resources = cls(
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
        )
        for kind, build in _PARTS.items():
            resources.parts[kind] = build(resources)
        return resources

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One unit of work, the only way to open one (a request's `Session` is one too):
        commits, then carries out its `after_commit` queue (platform/transactions.py)."""
        return open_transaction(self.sessionmaker, self._after_commit)

    async def _after_commit(self, queue: AfterCommit) -> None:
        await self.cache.invalidate(*sorted(queue.namespaces))
        retention = Retention(self.settings.realtime_catchup_s, self.settings.realtime_catchup_max)
        await publish_all(self.request_redis, queue.events, retention)
        if queue.jobs:
            await self.get(Dispatcher).dispatch(queue.jobs)  # type: ignore[type-abstract]
        for callback in queue.callbacks:
            await callback()

    async def close(self) -> None:
        try:
            for part in reversed(self.parts.values()):
                closing = getattr(part, "aclose", None) or getattr(part, "close", None)
                if closing is not None:
                    await closing()
            await self.redis.aclose()
            await self.request_redis.aclose()
        finally:
            await self.engine.dispose()
