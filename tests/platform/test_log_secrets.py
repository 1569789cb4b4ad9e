"""A real API process's whole output, in each log format, holds no password, token, API key,
refresh token or SECRET_KEY, whatever happens: failed and good sign-ins, API-key calls,
refreshes, a WebSocket with its token in the URL, and a 500 (logged once, shortly)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from steward.platform import migrations
from tests.engines import EngineSet
from tests.live import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


async def _database(url: str, name: str, *, drop: bool = False) -> str:
    plain = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


async def _break_users_table(url: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute("ALTER TABLE users RENAME TO users_gone")
    finally:
        await conn.close()


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_no_secret_reaches_the_process_output(engines: EngineSet, log_format: str) -> None:
    name = f"steward_logs_{secrets.token_hex(4)}"
    database_url = await _database(engines.database_url, name)
    await asyncio.to_thread(migrations.upgrade, database_url)
    secret_key = "sk-" + secrets.token_hex(24)
    password, wrong = "Pw-" + secrets.token_hex(8), "Wrong-" + secrets.token_hex(8)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": engines.redis_url,
           "SECRET_KEY": secret_key, "LOG_FORMAT": log_format, "LOG_LEVEL": "DEBUG",
           "RATE_LIMIT_LOGIN": "1000/minute"}  # fmt: skip
    log_path = ROOT / ".steward-test" / f"logs-{log_format}.log"
    log_path.parent.mkdir(exist_ok=True)
    log_file = log_path.open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - started once; the test then awaits HTTP
        [sys.executable, "-m", "steward", "api", "--port", str(port)],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = [secret_key, password, wrong]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and process.poll() is None
                    await asyncio.sleep(0.1)
            email = f"logs-{secrets.token_hex(4)}@example.com"
            registered = await http.post(
                "/api/v1/auth/register", json={"email": email, "password": password}
            )
            assert registered.status_code == 201
            failed = await http.post(
                "/api/v1/auth/token", data={"username": email, "password": wrong}
            )
            assert failed.status_code == 401
            tokens = (
                await http.post(
                    "/api/v1/auth/token", data={"username": email, "password": password}
                )
            ).json()
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            key = (
                await http.post(
                    "/api/v1/api-keys", json={"name": "k", "scopes": ["todos:read"]}, headers=auth
                )
            ).json()["secret"]
            assert (await http.get("/api/v1/todos", headers={"x-api-key": key})).status_code == 200
            refreshed = (
                await http.post(
                    "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                )
            ).json()
            seen += [tokens["access_token"], tokens["refresh_token"], key]
            seen += [refreshed["access_token"], refreshed["refresh_token"]]
            socket_url = (
                f"ws://127.0.0.1:{port}/api/v1/realtime?access_token={tokens['access_token']}"
            )
            async with connect(socket_url) as ws:
                assert "ready" in await asyncio.wait_for(ws.recv(), 5)

            await _break_users_table(database_url)
            crashed = await http.post(
                "/api/v1/auth/token", data={"username": email, "password": password}
            )
            assert crashed.status_code == 500
            assert crashed.headers["content-type"] == "application/problem+json"
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
        log_file.close()
        await _database(engines.database_url, name, drop=True)
    output = log_path.read_text()

    leaked = [value[:8] + "..." for value in seen if value in output]
    assert not leaked, f"secrets in the {log_format} log: {leaked}"
    assert output.count("http.unhandled_error") == 1, output[-3000:]
    # One short record: the traceback's innermost frames, no local variables.
    error_at = output.index("http.unhandled_error")
    record = output[error_at : output.find("http.request", error_at)]
    assert record.count("\n") < 120 if log_format == "console" else len(record) < 20_000
    assert "users" in record  # the cause is there: relation "users" does not exist
    assert "access_token=[redacted]" in output  # the WebSocket's request line, redacted
