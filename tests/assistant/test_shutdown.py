"""SIGTERM drains: readiness fails first; an open assistant stream goes on for the grace
period, then receives a final `error` event saying where to resume, and its run ends in a
terminal state."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from sse_starlette import sse as sse_starlette

from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import api_process

ROOT = Path(__file__).resolve().parents[2]


async def test_readiness_fails_once_shutdown_begins(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ready")).status_code == 200
    sse_starlette.AppStatus.should_exit = True
    try:
        draining = await client.get("/ready")
    finally:
        sse_starlette.AppStatus.should_exit = False
    assert draining.status_code == 503
    assert draining.json()["type"].endswith("/draining")


@pytest.mark.slow
async def test_sigterm_gives_open_streams_a_grace_then_a_resume_point(engines: EngineSet) -> None:
    env = {"DATABASE_URL": engines.database_url, "REDIS_URL": engines.redis_url,
           "ASSISTANT_OFFLINE_DELAY_S": "0.1", "SHUTDOWN_GRACE_S": "1.5", "LOG_FORMAT": "json",
           "RATE_LIMIT_LOGIN": "1000/minute", "RATE_LIMIT_REGISTER": "1000/minute"}  # fmt: skip
    log_path = ROOT / ".steward-test" / "shutdown.log"
    events: list[tuple[str, dict[str, object]]] = []
    with api_process(env, log_path) as served:
        process = served.process
        async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
            account = await make_account(http)
            created = await http.post(
                "/api/v1/assistant/conversations", json={}, headers=account.headers
            )
            long_message = " ".join(f"word{i}" for i in range(200))  # ~20 s of tokens
            async with http.stream(
                "POST", f"/api/v1/assistant/conversations/{created.json()['id']}/messages",
                json={"content": long_message},
                headers={**account.headers, "Accept": "text/event-stream"},
            ) as response:  # fmt: skip
                assert response.status_code == 200
                kind = None
                signalled_at = 0.0
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: ") and kind is not None:
                        events.append((kind, json.loads(line.removeprefix("data: "))))
                        tokens = sum(1 for k, _ in events if k == "token")
                        if tokens == 5 and not signalled_at:
                            process.send_signal(signal.SIGTERM)
                            signalled_at = time.monotonic()
                ended_after = time.monotonic() - signalled_at
        await asyncio.to_thread(process.wait, 30)

    kinds = [kind for kind, _ in events]
    assert kinds.count("token") > 10, kinds  # the stream went on during the grace period
    assert kinds[-1] == "error", kinds[-5:]
    farewell = events[-1][1]
    run_id = events[0][1]["run_id"]
    assert farewell["resume"] == f"/api/v1/assistant/runs/{run_id}/events"
    assert farewell["status"] == 503
    assert 1.0 < ended_after < 6.0, ended_after
    # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly.
    assert process.returncode in (0, -signal.SIGTERM)
    assert '"app.stopped"' in log_path.read_text()
    conn = await asyncpg.connect(engines.database_url.replace("+asyncpg", ""))
    try:
        run_status = await conn.fetchval(
            "SELECT status FROM runs WHERE id = $1", uuid.UUID(str(run_id))
        )
    finally:
        await conn.close()
    assert run_status in ("cancelled", "failed", "completed"), run_status
