"""The unit of work: one way to open a transaction (a request's session is one), committed on
success and rolled back on error, with one after-commit queue that every entry point flushes:
live events, cache invalidations, jobs and callbacks, all dropped on a rollback."""

from __future__ import annotations

import ast
import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import steward
from steward.platform.deps import Session
from steward.platform.errors import StewardError
from steward.platform.resources import Resources
from steward.platform.transactions import Dispatch, after_commit
from tests.engines import EngineSet


class _KeptConflict(StewardError):
    status = 409
    slug = "kept"
    keeps_changes = True


def _queue_everything(session: AsyncSession, mark: str, done: list[str]) -> None:
    queue = after_commit(session)
    queue.publish(f"test:{mark}", {"mark": mark})
    queue.invalidate(f"ns:{mark}")
    queue.enqueue(Dispatch(job_id=f"job:{mark}", task="steward.ping", args=[], kwargs={}))

    async def callback() -> None:
        done.append(f"callback:{mark}")

    queue.call(callback)


def _sent_jobs(engines: EngineSet) -> set[str]:
    """The ids of the jobs waiting in the suite broker's default queue."""
    broker = SyncRedis.from_url(engines.redis_spare(1))
    try:
        return {orjson.loads(raw)["headers"]["id"] for raw in broker.lrange("default", 0, -1)}
    finally:
        broker.close()


@pytest.fixture
def done() -> list[str]:
    return []


@pytest.fixture
def app(app: FastAPI, done: list[str]) -> FastAPI:
    @app.post("/_test/notes/{note}")
    async def write_note(note: str, session: Session, fail: str = "") -> dict[str, str]:
        await session.execute(text("INSERT INTO _test_notes (note) VALUES (:n)"), {"n": note})
        _queue_everything(session, note, done)
        if fail == "crash":
            raise RuntimeError("after the write")
        if fail == "kept":
            raise _KeptConflict("answered 409, the change stays")
        return {"note": note}

    return app


@pytest.fixture
async def notes(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[Resources]:
    resources: Resources = app.state.resources
    async with resources.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS _test_notes (note text)"))
        await conn.execute(text("TRUNCATE _test_notes"))
    try:
        yield resources
    finally:
        async with resources.engine.begin() as conn:
            await conn.execute(text("DROP TABLE _test_notes"))


async def _stored(resources: Resources) -> list[str]:
    async with resources.transaction() as session:
        rows = await session.execute(text("SELECT note FROM _test_notes ORDER BY note"))
        return [row[0] for row in rows]


async def _cached(resources: Resources, mark: str) -> Any:
    """The cached value of `ns:<mark>`: a fresh token whenever the namespace moved on."""

    async def compute() -> str:
        return uuid.uuid4().hex

    return await resources.cache.get_or_compute(f"ns:{mark}", "k", compute, ttl_s=60)


async def _write_then_fail(resources: Resources, mark: str, done: list[str]) -> None:
    async with resources.transaction() as session:
        await session.execute(text("INSERT INTO _test_notes VALUES (:n)"), {"n": mark})
        _queue_everything(session, mark, done)
        raise LookupError("rolled back")


async def _listen(redis: Redis, marks: list[str]) -> Any:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(*(f"test:{mark}" for mark in marks))
    return pubsub


async def _drain(pubsub: Any, seconds: float = 1.0) -> set[str]:
    heard: set[str] = set()
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(timeout=min(left, 0.2))
        if message is not None:
            heard.add(orjson.loads(message["data"])["mark"])
    return heard


async def test_every_entry_point_delivers_its_queue_after_commit_and_drops_it_on_rollback(
    client: httpx.AsyncClient, notes: Resources, done: list[str], engines: EngineSet
) -> None:
    resources = notes
    marks = {k: f"{k}-{uuid.uuid4().hex[:6]}" for k in ("request", "kept", "crash", "unit", "undo")}
    before = {mark: await _cached(resources, mark) for mark in marks.values()}
    pubsub = await _listen(resources.redis, list(marks.values()))
    try:
        assert (await client.post(f"/_test/notes/{marks['request']}")).status_code == 200
        kept = await client.post(f"/_test/notes/{marks['kept']}", params={"fail": "kept"})
        assert kept.status_code == 409
        crash = await client.post(f"/_test/notes/{marks['crash']}", params={"fail": "crash"})
        assert crash.status_code == 500
        async with resources.transaction() as session:
            await session.execute(text("INSERT INTO _test_notes VALUES (:n)"), {"n": marks["unit"]})
            _queue_everything(session, marks["unit"], done)
        with pytest.raises(LookupError):
            await _write_then_fail(resources, marks["undo"], done)
        heard = await _drain(pubsub)
    finally:
        await pubsub.aclose()
    delivered = [marks["request"], marks["kept"], marks["unit"]]
    dropped = [marks["crash"], marks["undo"]]
    assert await _stored(resources) == sorted(delivered)
    assert heard == set(delivered)
    sent = _sent_jobs(engines)
    for mark in delivered:
        assert await _cached(resources, mark) != before[mark], f"{mark} not invalidated"
        assert f"callback:{mark}" in done
        assert f"job:{mark}" in sent
    for mark in dropped:
        assert await _cached(resources, mark) == before[mark], f"{mark} invalidated"
        assert f"callback:{mark}" not in done
        assert f"job:{mark}" not in sent


def test_only_the_resources_open_transactions() -> None:
    """No second way in: nothing but `Resources.transaction()` opens a session itself."""
    package = Path(steward.__file__).parent
    found = []
    for module in sorted(package.rglob("*.py")):
        if module.name == "transactions.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.names:
                found += [
                    f"{module.name} imports {alias.name}"
                    for alias in node.names
                    if alias.name == "open_transaction" and module.name != "resources.py"
                ]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "commit"
            ):
                found.append(f"{module.relative_to(package)}:{node.lineno} commits")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "sessionmaker"
            ):
                found.append(f"{module.relative_to(package)}:{node.lineno} opens a session")
    assert not found, found


async def test_pool_settings_are_applied(app: FastAPI, client: httpx.AsyncClient) -> None:
    resources: Resources = app.state.resources
    pool = resources.engine.pool
    assert pool.size() == resources.settings.db_pool_size  # type: ignore[attr-defined]
    async with resources.transaction() as session:
        timeout = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        assert timeout == f"{resources.settings.db_statement_timeout_ms // 1000}s"
