"""The unit of work: one transaction per request, committed on success, rolled back on error."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from steward.platform.deps import Session
from steward.platform.resources import Resources


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    @app.post("/_test/notes/{note}")
    async def write_note(note: str, session: Session, fail: bool = False) -> dict[str, str]:
        await session.execute(text("INSERT INTO _test_notes (note) VALUES (:n)"), {"n": note})
        if fail:
            raise RuntimeError("after the write")
        return {"note": note}

    return app


async def _notes(resources: Resources) -> list[str]:
    async with resources.sessionmaker() as session:
        rows = await session.execute(text("SELECT note FROM _test_notes ORDER BY note"))
        return [row[0] for row in rows]


async def test_request_commits_on_success_and_rolls_back_on_error(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    resources: Resources = app.state.resources
    async with resources.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS _test_notes (note text)"))
        await conn.execute(text("TRUNCATE _test_notes"))
    try:
        kept, lost = f"kept-{uuid.uuid4().hex[:6]}", f"lost-{uuid.uuid4().hex[:6]}"
        assert (await client.post(f"/_test/notes/{kept}")).status_code == 200
        assert (await client.post(f"/_test/notes/{lost}", params={"fail": True})).status_code == 500
        assert await _notes(resources) == [kept]
    finally:
        async with resources.engine.begin() as conn:
            await conn.execute(text("DROP TABLE _test_notes"))


async def test_pool_settings_are_applied(app: FastAPI, client: httpx.AsyncClient) -> None:
    resources: Resources = app.state.resources
    pool = resources.engine.pool
    assert pool.size() == resources.settings.db_pool_size  # type: ignore[attr-defined]
    async with resources.sessionmaker() as session:
        assert isinstance(session, AsyncSession)
        timeout = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        assert timeout == f"{resources.settings.db_statement_timeout_ms // 1000}s"
