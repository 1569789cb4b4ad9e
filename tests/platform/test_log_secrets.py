"""A real API process's whole output, in each log format, holds no password, token, API key,
refresh token or SECRET_KEY, whatever happens: failed and good sign-ins, API-key calls,
refreshes, a WebSocket with its token in the URL, and a 500 (logged once, shortly)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from steward.platform import migrations
from tests.engines import EngineSet, create_database, drop_database, execute
from tests.live import api_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


EMAIL = "logs@example.com"


async def _sign_in_and_use_every_credential(
    http: httpx.AsyncClient, port: int, *, password: str, wrong: str
) -> list[str]:
    """A failed and a good sign-in, an API key made and used, a refresh, a WebSocket with
    its token in the URL; returns every credential that went over the wire."""
    registered = await http.post(
        "/api/v1/auth/register", json={"email": EMAIL, "password": password}
    )
    assert registered.status_code == 201
    failed = await http.post("/api/v1/auth/token", data={"username": EMAIL, "password": wrong})
    assert failed.status_code == 401
    signed_in = await http.post(
        "/api/v1/auth/token", data={"username": EMAIL, "password": password}
    )
    tokens = signed_in.json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    created = await http.post(
        "/api/v1/api-keys", json={"name": "k", "scopes": ["todos:read"]}, headers=auth
    )
    key = created.json()["secret"]
    assert (await http.get("/api/v1/todos", headers={"x-api-key": key})).status_code == 200
    refreshed = (
        await http.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).json()
    socket_url = f"ws://127.0.0.1:{port}/api/v1/realtime?access_token={tokens['access_token']}"
    async with connect(socket_url) as ws:
        assert "ready" in await asyncio.wait_for(ws.recv(), 5)
    return [tokens["access_token"], tokens["refresh_token"], key,
            refreshed["access_token"], refreshed["refresh_token"]]  # fmt: skip


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_no_secret_reaches_the_process_output(engines: EngineSet, log_format: str) -> None:
    name = f"steward_logs_{secrets.token_hex(4)}"
    database_url = await create_database(engines.database_url, name)
    await asyncio.to_thread(migrations.upgrade, database_url)
    secret_key = "sk-" + secrets.token_hex(24)
    password, wrong = "Pw-" + secrets.token_hex(8), "Wrong-" + secrets.token_hex(8)
    env = {"DATABASE_URL": database_url, "REDIS_URL": engines.redis_url,
           "SECRET_KEY": secret_key, "LOG_FORMAT": log_format, "LOG_LEVEL": "DEBUG",
           "RATE_LIMIT_LOGIN": "1000/minute"}  # fmt: skip
    log_path = ROOT / ".steward-test" / f"logs-{log_format}.log"
    seen: list[str] = [secret_key, password, wrong]
    try:
        with api_process(env, log_path) as served:
            async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
                seen += await _sign_in_and_use_every_credential(
                    http, served.port, password=password, wrong=wrong
                )
                await execute(database_url, "ALTER TABLE users RENAME TO users_gone")
                crashed = await http.post(
                    "/api/v1/auth/token", data={"username": EMAIL, "password": password}
                )
                assert crashed.status_code == 500
                assert crashed.headers["content-type"] == "application/problem+json"
    finally:
        await drop_database(engines.database_url, name)
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
