"""Request ids, access logs, security headers and CORS."""

from __future__ import annotations

import re

import httpx
import pytest
from asgi_lifespan import LifespanManager

from steward.app import create_app
from tests.conftest import LogCapture, make_settings
from tests.engines import EngineSet


async def test_sane_incoming_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"x-request-id": "mobile-42.abc:1"})
    assert response.headers["x-request-id"] == "mobile-42.abc:1"


@pytest.mark.parametrize(
    "incoming", ["x" * 129, "has space", "<script>", "semi;colon", "new\u00e9line"]
)
async def test_unsafe_incoming_request_id_is_replaced(
    client: httpx.AsyncClient, incoming: str
) -> None:
    response = await client.get("/health", headers={"x-request-id": incoming.encode()})
    assert response.headers["x-request-id"] != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_access_log_has_request_fields(client: httpx.AsyncClient, logs: LogCapture) -> None:
    response = await client.get("/no/such/thing", headers={"x-request-id": "trace-me"})
    (line,) = [e for e in logs.events("http.request") if e["request_id"] == "trace-me"]
    assert line["method"] == "GET"
    assert line["status"] == response.status_code == 404
    assert line["route"] == "<unmatched>"
    assert line["path"] == "/no/such/thing"
    assert isinstance(line["duration_ms"], float)
    assert line["client_ip"] == "127.0.0.1"
    assert "timestamp" in line and line["level"] == "info"


async def test_security_headers_on_api_responses(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "strict-transport-security" not in response.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/playground"])
async def test_pages_get_a_same_origin_policy_not_the_api_one(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy  # no CDN, no third party
    if path == "/playground":  # it holds tokens: no inline script may run
        assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Every script and stylesheet the page names is served here.
    for asset in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', response.text):
        assert asset.startswith("/"), asset
        assert (await client.get(asset)).status_code == 200, asset


async def test_cors_allows_only_configured_origins(engines: EngineSet, clean_state: None) -> None:
    app = create_app(make_settings(engines, cors_origins="https://app.example, https://b.example"))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as http,
    ):
        preflight = {"access-control-request-method": "POST"}
        allowed = await http.options(
            "/health", headers={"origin": "https://b.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://b.example"
        denied = await http.options(
            "/health", headers={"origin": "https://evil.example", **preflight}
        )
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers
        simple = await http.get("/health", headers={"origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


async def test_hsts_in_production(engines: EngineSet, clean_state: None) -> None:
    settings = make_settings(engines, environment="prod", secret_key="s" * 40)
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as http,
    ):
        response = await http.get("/health")
        assert response.headers["strict-transport-security"].startswith("max-age=")


@pytest.mark.parametrize(
    "path",
    [
        "/playground/static/../../settings.py",
        "/playground/static/%2e%2e/%2e%2e/settings.py",
        "/docs/static/..%2fcore.py",
        "/playground/static/%00.js",
        "/playground/static/" + "a" * 5000,
    ],
)
async def test_page_assets_serve_nothing_outside_their_folders(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404, response.text[:200]
    assert "import" not in response.text
