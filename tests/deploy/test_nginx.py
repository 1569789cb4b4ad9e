"""deploy/nginx/steward.conf in front of Steward, for real: HTTP goes to HTTPS except
certbot's challenges, HSTS is sent, server-sent events and WebSockets pass through as they
happen, uploads have their own limit, /metrics stays inside, and the client's address that
Steward records is the one nginx saw, whatever X-Forwarded-For the client sent."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from tests.deploy.conftest import require_tool
from tests.deploy.nginx import configure, running
from tests.deploy.serving import gunicorn, gunicorn_env
from tests.engines import EngineSet
from tests.factories import make_account
from tests.live import free_port

pytestmark = pytest.mark.slow


async def test_nginx_serves_steward_as_configured(engines: EngineSet, tmp_path: Path) -> None:
    binary = require_tool("nginx")
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = gunicorn_env(engines, port, tmp_path / "metrics", TRUSTED_PROXIES="127.0.0.1/32",
                       WEB_CONCURRENCY="1")  # fmt: skip
    site = configure(tmp_path / "nginx", [f"127.0.0.1:{port}"])
    tls = ssl.create_default_context(cafile=str(site.certificate))
    base = f"https://127.0.0.1:{site.https}"
    challenge = site.prefix / "webroot" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "token123").write_text("proof")
    with gunicorn(env, log), running(binary, site):
        plain = f"http://127.0.0.1:{site.http}"
        async with httpx.AsyncClient() as http:
            moved = await http.get(f"{plain}/api/v1/todos?limit=1")
            assert moved.status_code == 301
            assert moved.headers["location"] == "https://127.0.0.1/api/v1/todos?limit=1"
            acme = await http.get(f"{plain}/.well-known/acme-challenge/token123")
            assert (acme.status_code, acme.text) == (200, "proof")

        async with httpx.AsyncClient(base_url=base, verify=tls, timeout=10) as http:
            health = await http.get("/health")
            assert health.status_code == 200
            assert health.headers["strict-transport-security"].startswith("max-age=63072000")
            assert (await http.get("/metrics")).status_code == 404
            alice = await make_account(http)

            # Uploads: 1 MiB for requests in general, more for documents (Steward decides).
            big = b"x" * (2 * 1024 * 1024)
            refused = await http.post("/api/v1/todos", content=big, headers=alice.headers)
            assert refused.status_code == 413 and "nginx" in refused.text
            upload = await http.post("/api/v1/knowledge/documents", content=big,
                                     headers={"content-type": "text/plain"})  # fmt: skip
            assert upload.status_code == 401  # Steward's answer: it got the whole body

            # Server-sent events arrive one by one, not when a buffer fills.
            async with aconnect_sse(http, "GET", "/api/v1/realtime/events",
                                    headers=alice.headers) as source:  # fmt: skip
                events = source.aiter_sse()
                assert (await asyncio.wait_for(anext(events), 5)).event == "ready"
                await http.post("/api/v1/todos", json={"title": "through nginx"},
                                headers=alice.headers)  # fmt: skip
                created = await asyncio.wait_for(anext(events), 5)
                assert created.event == "todo.created"

            # WebSockets upgrade through it.
            ws_url = (
                f"wss://127.0.0.1:{site.https}/api/v1/realtime?access_token={alice.access_token}"
            )
            async with connect(ws_url, ssl=tls) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ready"
                await http.post("/api/v1/todos", json={"title": "ws"}, headers=alice.headers)
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert message["type"] == "todo.created"

        # The address Steward records: nginx's view of the client (here 127.0.0.5), not the
        # X-Forwarded-For the client made up.
        marker = f"/probe-{uuid.uuid4().hex}"
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.5", verify=tls)
        async with httpx.AsyncClient(base_url=base, transport=transport) as http:
            answer = await http.get(marker, headers={"X-Forwarded-For": "6.6.6.6"})
            assert answer.status_code == 404
        await asyncio.sleep(0.2)
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{") and marker in line]  # fmt: skip
    assert [line["client_ip"] for line in lines if line.get("event") == "http.request"] == [
        "127.0.0.5"
    ]
