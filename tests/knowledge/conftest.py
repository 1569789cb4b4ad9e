"""Knowledge tests: a database with pgvector (the embedded engine when the machine's
PostgreSQL lacks it), reset per test, and the fake provider for embeddings endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from steward.app import create_app
from steward.platform import migrations
from steward.platform.db import async_url
from steward.settings import Settings
from tests.assistant.conftest import ServedFake, fake, fake_server  # noqa: F401 - fixtures
from tests.conftest import LogCapture, empty_tables, make_settings
from tests.engines import EngineSet, provide_vector_engines


@pytest.fixture(scope="session")
def vector_engines(engines: EngineSet) -> Iterator[EngineSet]:
    with provide_vector_engines(engines) as urls:
        if urls is not engines:
            migrations.upgrade(urls.database_url)
        yield urls


@pytest.fixture(scope="session")
async def _vector_reset_engine(vector_engines: EngineSet) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url(vector_engines.database_url), pool_size=1)
    yield engine
    await engine.dispose()


@pytest.fixture
async def vector_state(
    vector_engines: EngineSet, _vector_reset_engine: AsyncEngine, clean_state: None
) -> None:
    """Empty tables in the vector database (`clean_state` flushed Redis and the other)."""
    await empty_tables(_vector_reset_engine)


def embedder_settings(url: str, **overrides: Any) -> dict[str, Any]:
    config = {"base_url": url, "model": "fake-embedder", "api_key": "test-key", "max_retries": 0,
              "total_timeout_s": 10.0}  # fmt: skip
    config.update(overrides)
    return {"embedding_providers": {"fake": config}}


@pytest.fixture
def vector_settings(vector_engines: EngineSet) -> Settings:
    return make_settings(vector_engines)


@pytest.fixture
def vector_app(vector_settings: Settings, vector_state: None, logs: LogCapture) -> FastAPI:
    return create_app(vector_settings)
