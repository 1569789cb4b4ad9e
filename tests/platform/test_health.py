"""Liveness and readiness, including a dependency that is down; what the app sets up in the
process when it starts."""

from __future__ import annotations

import gc
import socket

import httpx
from asgi_lifespan import LifespanManager

from steward.app import create_app
from steward.assistant import tokens
from tests.conftest import make_settings
from tests.engines import EngineSet, reachable
from tests.waiting import wait_until


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _get(app_settings: object, path: str) -> httpx.Response:
    app = create_app(app_settings)  # type: ignore[arg-type]
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as http,
    ):
        return await http.get(path)


async def test_health_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_postgres_and_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    checks = {"postgres": "ok", "redis": "ok", "broker": "ok"}  # the suite's broker is its own
    assert response.json() == {"status": "ok", "checks": checks}


async def test_ready_is_503_naming_redis_when_redis_is_down(
    engines: EngineSet, clean_state: None
) -> None:
    settings = make_settings(
        engines, redis_url=f"redis://127.0.0.1:{_closed_port()}/0", readiness_timeout_s=1,
        celery_broker_url=None,
    )  # fmt: skip
    response = await _get(settings, "/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["checks"] == {"postgres": "ok", "redis": "fail"}
    assert "redis" in body["detail"] and "postgres" not in body["detail"]


async def test_ready_is_503_naming_postgres_when_postgres_is_down(
    engines: EngineSet, clean_state: None
) -> None:
    settings = make_settings(
        engines,
        database_url=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x",
        readiness_timeout_s=1,
        db_connect_timeout_s=1,
        celery_broker_url=None,
    )
    response = await _get(settings, "/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"postgres": "fail", "redis": "ok"}


async def test_ready_checks_a_separate_broker(engines: EngineSet, clean_state: None) -> None:
    down = make_settings(
        engines,
        celery_broker_url=f"amqp://guest:guest@127.0.0.1:{_closed_port()}//",
        readiness_timeout_s=1,
    )
    response = await _get(down, "/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "fail"
    if reachable("127.0.0.1", 5672):
        up = make_settings(engines, celery_broker_url="amqp://guest:guest@127.0.0.1:5672//")
        response = await _get(up, "/ready")
        assert response.status_code == 200
        assert response.json()["checks"]["broker"] == "ok"


async def test_the_app_sets_its_gc_thresholds(engines: EngineSet) -> None:
    before = gc.get_threshold()
    app = create_app(make_settings(engines, gc_thresholds=(900, 11, 77)))
    try:
        async with LifespanManager(app):
            assert gc.get_threshold() == (900, 11, 77)
    finally:
        gc.set_threshold(*before)


async def test_the_app_loads_the_tokenizer_when_it_starts(engines: EngineSet) -> None:
    tokens._encoding.cache_clear()
    async with LifespanManager(create_app(make_settings(engines))):
        # Loaded in a thread; about 150 ms.
        await wait_until(lambda: tokens._encoding.cache_info().currsize, what="the tokenizer")
        assert tokens._encoding.cache_info().currsize == 1
