"""Migrations apply from scratch, reverse cleanly, and match the models."""

from __future__ import annotations

import anyio
import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from steward.platform import migrations
from steward.platform.db import Base, async_url
from tests.engines import EngineSet, _admin_url, _create_database, _drop_database, _with_database


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(_admin_url(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(async_url(url))

    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def test_upgrade_downgrade_upgrade(engines: EngineSet) -> None:
    name = "steward_migrations_check"
    admin = engines.database_url
    anyio.run(_drop_database, admin, name)
    anyio.run(_create_database, admin, name)
    url = _with_database(admin, name)
    try:
        migrations.upgrade(url)
        expected = {t.name for t in Base.metadata.sorted_tables}
        assert expected <= anyio.run(_tables, url)
        assert anyio.run(_diff, url) == [], "models and migrations disagree"
        migrations.downgrade(url, "base")
        assert anyio.run(_tables, url) == {"alembic_version"}
        migrations.upgrade(url)
        assert expected <= anyio.run(_tables, url)
    finally:
        anyio.run(_drop_database, admin, name)
