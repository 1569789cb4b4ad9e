"""The fake OpenAI-compatible provider, served for real, and app settings pointing at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from steward.settings import Settings
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import Account
from tests.fakes.openai_server import MODEL, FakeOpenAI
from tests.live import serve_asgi


class ServedFake(FakeOpenAI):
    url: str


@pytest.fixture(scope="session")
async def fake_server() -> AsyncIterator[ServedFake]:
    fake = ServedFake()
    async with serve_asgi(fake.app) as base:
        fake.url = f"{base}/v1"
        yield fake


@pytest.fixture
def fake(fake_server: ServedFake) -> ServedFake:
    fake_server.reset()
    fake_server.delay_s = 0.0
    return fake_server


def provider_settings(url: str, **overrides: Any) -> dict[str, Any]:
    config = {
        "base_url": url,
        "model": MODEL,
        "api_key": "test-key",
        "context_window": 4096,
        "max_output_tokens": 256,
        "first_token_timeout_s": 1.0,
        "idle_timeout_s": 1.0,
        "total_timeout_s": 20.0,
        "max_retries": 2,
    }
    config.update(overrides)
    return config


def assistant_settings(engines: EngineSet, url: str, **overrides: Any) -> Settings:
    provider = overrides.pop("provider", {})
    values: dict[str, Any] = {
        "assistant_providers": {"fake": provider_settings(url, **provider)},
        "assistant_retry_base_s": 0.01,
        "assistant_retry_max_s": 0.05,
        "assistant_breaker_failures": 5,
        "assistant_breaker_reset_s": 0.5,
        "rate_limit_assistant": "1000/minute",
    }
    values.update(overrides)
    return make_settings(engines, **values)


@pytest.fixture
def settings(engines: EngineSet, fake: ServedFake) -> Settings:
    return assistant_settings(engines, fake.url)


async def new_conversation(client: httpx.AsyncClient, account: Account) -> str:
    response = await client.post(
        "/api/v1/assistant/conversations", json={"title": "test"}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def ask(
    client: httpx.AsyncClient, account: Account, conversation: str, content: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/assistant/conversations/{conversation}/messages",
        json={"content": content, **extra},
        headers=account.headers,
    )


async def api_key(
    client: httpx.AsyncClient, account: Account, scopes: tuple[str, ...] = ("assistant",)
) -> str:
    """A new API key's secret: the gateway takes keys, not sign-in tokens."""
    created = await client.post("/api/v1/api-keys", json={"name": "sdk", "scopes": list(scopes)},
                                headers=account.headers)  # fmt: skip
    assert created.status_code == 201, created.text
    return str(created.json()["secret"])
