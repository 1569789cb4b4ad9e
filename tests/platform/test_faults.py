"""Engine faults against engines this test owns (embedded PostgreSQL and Valkey in a folder of
its own, so freezing them harms nothing else): a frozen Redis costs a request at most its
deadline and then nothing; a frozen PostgreSQL is a prompt 503 with Retry-After, never a
500; both recover by themselves once the engine is back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from steward.app import create_app
from steward.engines import EmbeddedEngines, EngineURLs
from steward.platform import migrations
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import make_account

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def owned() -> Iterator[tuple[EmbeddedEngines, EngineURLs]]:
    engines = EmbeddedEngines(ROOT / ".steward-test" / f"faults-{os.getpid()}")
    urls = engines.start()
    migrations.upgrade(urls.database_url)
    try:
        yield engines, urls
    finally:
        engines.stop()


def _postgres_pids(engines: EmbeddedEngines) -> list[int]:
    server = engines._postgres._server  # the test owns it; nothing public names its pids
    assert server is not None
    postmaster = server.get_postmaster_info().pid  # type: ignore[attr-defined]
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *map(int, children)]


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def serving(urls: EngineURLs, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    fake = EngineSet(urls.database_url, urls.redis_url, "embedded")
    settings = make_settings(fake, **overrides)
    async with app_client(create_app(settings)) as http:
        yield http


async def _timed(http: httpx.AsyncClient, method: str, url: str, **kw: object) -> tuple[int, float]:
    started = time.monotonic()
    response = await http.request(method, url, **kw)  # type: ignore[arg-type]
    return response.status_code, time.monotonic() - started


async def test_frozen_redis_costs_a_request_at_most_its_deadline(
    owned: tuple[EmbeddedEngines, EngineURLs],
) -> None:
    engines, urls = owned
    async with serving(urls, redis_request_timeout_s=0.25, redis_breaker_reset_s=1.0) as http:
        account = await make_account(http)
        await http.post("/api/v1/todos", json={"title": "kept"}, headers=account.headers)
        assert engines._valkey._pid is not None
        with frozen([engines._valkey._pid]):
            timings = [
                await _timed(http, "GET", "/api/v1/todos", headers=account.headers)
                for _ in range(6)
            ]
            written = await _timed(
                http, "POST", "/api/v1/todos", json={"title": "while frozen"},
                headers=account.headers,
            )  # fmt: skip
        statuses = [status for status, _ in timings]
        assert statuses == [200] * 6, statuses  # fail open: served from PostgreSQL
        # Each call on the request path waits at most its deadline (a request makes up to
        # three: limit, principal, cache); once the circuit opens, none waits at all.
        assert max(seconds for _, seconds in timings) < 1.0, timings
        assert timings[-1][1] < 0.1, timings
        assert written[0] == 201 and written[1] < 1.0, written
        deadline = time.monotonic() + 10
        while True:  # the breaker probes after its reset time and closes
            listed = await http.get("/api/v1/todos", headers=account.headers)
            if "ratelimit" in listed.headers:  # the limiter reached Redis again
                break
            assert time.monotonic() < deadline, "Redis calls did not resume"
            await _pause()
        titles = {t["title"] for t in listed.json()["items"]}
        assert titles == {"kept", "while frozen"}


async def test_frozen_postgres_is_a_prompt_503_and_recovers(
    owned: tuple[EmbeddedEngines, EngineURLs],
) -> None:
    engines, urls = owned
    overrides = {"db_pool_timeout_s": 2.0, "db_command_timeout_s": 2.0,
                 "db_connect_timeout_s": 2.0}  # fmt: skip
    async with serving(urls, **overrides) as http:
        account = await make_account(http)
        before = await http.post("/api/v1/todos", json={"title": "before"}, headers=account.headers)
        assert before.status_code == 201
        with frozen(_postgres_pids(engines)):
            answers = [
                await _timed(
                    http, "POST", "/api/v1/todos", json={"title": f"t{i}"}, headers=account.headers
                )
                for i in range(3)
            ]
            response = await http.get("/api/v1/todos?done=true", headers=account.headers)
        assert [status for status, _ in answers] == [503] * 3, answers
        # Bounded by the deadlines (2 s each): a pooled connection's statement times out,
        # then the request's next attempt to connect does; no 15-30 s waits.
        assert max(seconds for _, seconds in answers) < 5.0, answers
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
        deadline = time.monotonic() + 15
        while True:
            created = await http.post(
                "/api/v1/todos", json={"title": "after"}, headers=account.headers
            )
            if created.status_code == 201:
                break
            assert created.status_code == 503, created.text
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            await _pause()
        listed = await http.get("/api/v1/todos", headers=account.headers)
        titles = {t["title"] for t in listed.json()["items"]}
        assert {"before", "after"} <= titles  # every acknowledged write is there


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.2)
