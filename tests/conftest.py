"""Suite-wide fixtures: real PostgreSQL and Redis, a migrated database per session, clean
state per test, and an app with its lifespan running behind an httpx client."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from steward.app import create_app
from steward.platform import migrations
from steward.platform.db import Base, async_url
from steward.platform.logging import configure_logging
from steward.settings import Settings
from tests.engines import EngineSet, provide_engines


@pytest.fixture(scope="session")
def engines() -> Iterator[EngineSet]:
    with provide_engines() as urls:
        migrations.upgrade(urls.database_url)
        yield urls


def make_settings(engines: EngineSet, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "dev",
        "database_url": engines.database_url,
        "redis_url": engines.redis_url,
        # Where the suite's workers listen (tests/workers.py): jobs the app sends reach them.
        "celery_broker_url": engines.redis_spare(1),
        "log_format": "json",
        # argon2 at 1 MiB and one pass: a sign-in costs ~1 ms instead of ~250 ms of CPU, and
        # the suite signs in hundreds of times (production refuses these values).
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "db_pool_size": 5,
        "db_max_overflow": 5,
        # Suites sign in often from one address; the limiter's own tests set real limits.
        "rate_limit_login": "1000/minute",
        "rate_limit_register": "1000/minute",
        "rate_limit_anonymous": "1000/minute",
    }
    if overrides.get("environment") == "prod":  # production's minimum cost, as it demands
        values.update(password_hash_time_cost=2, password_hash_memory_kib=19_456)
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(engines: EngineSet) -> Settings:
    return make_settings(engines)


class LogCapture:
    """Every log line the process writes, as parsed JSON objects."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]
        return [line for line in lines if name is None or line.get("event") == name]


@pytest.fixture
def logs(request: pytest.FixtureRequest) -> Iterator[LogCapture]:
    capture = LogCapture()
    configure_logging(level="INFO", json=True, stream=capture.stream)
    yield capture
    configure_logging(level="INFO", json=True)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        # Show what the app logged (tracebacks of 500s included) next to the failure.
        print("--- captured application log ---\n" + capture.text[-20000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


async def empty_tables(engine: AsyncEngine) -> None:
    # DELETE, children first: on tables this small it takes ~10 ms where TRUNCATE takes ~100.
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(text(f'DELETE FROM "{table.name}"'))


async def _reset_state(engines: EngineSet, engine: AsyncEngine) -> None:
    await empty_tables(engine)
    redis = Redis.from_url(engines.redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


@pytest.fixture(scope="session")
async def _reset_engine(engines: EngineSet) -> AsyncIterator[AsyncEngine]:
    """One engine for every reset (tests share the session's event loop)."""
    engine = create_async_engine(async_url(engines.database_url), pool_size=1)
    yield engine
    await engine.dispose()


@pytest.fixture
async def clean_state(engines: EngineSet, _reset_engine: AsyncEngine) -> AsyncIterator[None]:
    await _reset_state(engines, _reset_engine)
    return


@pytest.fixture
def app(settings: Settings, clean_state: None, logs: LogCapture) -> FastAPI:
    return create_app(settings)


@asynccontextmanager
async def app_client(
    app: FastAPI, *, client_ip: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` with its lifespan running, behind an httpx client (in process, no sockets)."""
    address = {"client": (client_ip, 1234)} if client_ip else {}
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, **address)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(app) as http:
        yield http
