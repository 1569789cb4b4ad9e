"""Embedded engines: start, reuse after a crash, one owner per data folder, clean stop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest
from redis import Redis

from steward.engines import EmbeddedEngines, EngineError

pytestmark = pytest.mark.slow


def _valkey_pid(data_dir: Path) -> int:
    return int((data_dir / "valkey" / "valkey.pid").read_text())


def _postgres_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _pgvector_version(url: str) -> str:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return str(
            await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname='vector'")
        )
    finally:
        await conn.close()


def test_engines_start_reuse_and_stop(tmp_path: Path) -> None:
    first = EmbeddedEngines(tmp_path)
    urls = first.start()
    try:
        assert Redis.from_url(urls.redis_url).ping()
        assert asyncio.run(_pgvector_version(urls.database_url))
        valkey_pid, postgres_pid = _valkey_pid(tmp_path), _postgres_pid(tmp_path)

        with pytest.raises(EngineError, match=r"in use by another steward run \(pid \d+\)"):
            EmbeddedEngines(tmp_path).start()

        # A crash leaves both engines running but releases the folder lock.
        first._lock.release()
        second = EmbeddedEngines(tmp_path)
        again = second.start()
        assert again == urls
        assert _valkey_pid(tmp_path) == valkey_pid
        assert _postgres_pid(tmp_path) == postgres_pid
        second.stop()
    finally:
        first.stop()

    assert not _alive(valkey_pid)
    assert not _alive(postgres_pid)
    assert not (tmp_path / "postgres" / "postmaster.pid").exists()


def test_data_is_kept_between_runs(tmp_path: Path) -> None:
    with EmbeddedEngines(tmp_path) as urls:
        Redis.from_url(urls.redis_url).set("kept", b"yes")

        async def write() -> None:
            conn = await asyncpg.connect(urls.database_url.replace("+asyncpg", ""))
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
            await conn.close()

        asyncio.run(write())

    with EmbeddedEngines(tmp_path) as urls:
        assert Redis.from_url(urls.redis_url).get("kept") == b"yes"

        async def read() -> str:
            conn = await asyncpg.connect(urls.database_url.replace("+asyncpg", ""))
            value = await conn.fetchval("SELECT v FROM kept")
            await conn.close()
            return str(value)

        assert asyncio.run(read()) == "yes"
