"""A provider's failure is named by its cause (refused, DNS, TLS, timeout, an error status),
and a run that fails without streaming answers that as a problem with the run, not a 200."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from steward.app import create_app
from steward.assistant.provider_errors import ProviderError
from steward.assistant.providers import ChatRequest, OpenAICompatible, TextDelta
from steward.settings_providers import ProviderConfig
from tests.assistant.conftest import ServedFake, ask, assistant_settings, new_conversation
from tests.conftest import app_client
from tests.deploy.nginx import _certificate
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import Script


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _failure(base_url: str, **config: float) -> ProviderError:
    provider = OpenAICompatible("p", ProviderConfig(base_url=base_url, model="m", **config))
    try:
        request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
        async for _ in provider.stream(request):
            pass
    except ProviderError as exc:
        return exc
    finally:
        await provider.aclose()
    raise AssertionError("the call succeeded")


async def _serve(handler: object, *, tls: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)  # type: ignore[arg-type]


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def silent_server() -> AsyncIterator[asyncio.Server]:
    """Accepts connections and never says a word."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await _serve(hold)
    yield server
    server.close()


@pytest.fixture
async def plain_http_server() -> AsyncIterator[asyncio.Server]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await _serve(answer)
    yield server
    server.close()


@pytest.fixture
async def untrusted_tls_server(tmp_path: Path) -> AsyncIterator[asyncio.Server]:
    certificate = _certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate, certificate.parent / "privkey.pem")

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await _serve(hold, tls=tls)
    yield server
    server.close()


async def test_an_answer_ends_at_done_though_the_provider_keeps_the_connection_open() -> None:
    """After `[DONE]` the rest of the body is read briefly (for the connection's reuse), not
    waited for: an open connection with nothing more on it must not stall a finished answer."""
    chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "done"}}]}\n\ndata: [DONE]\n\n'

    async def answer_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(chunk), chunk))  # fmt: skip
        await writer.drain()
        await reader.read()  # the body's end never comes

    server = await _serve(answer_and_hold)
    provider = OpenAICompatible(
        "p", ProviderConfig(base_url=f"http://127.0.0.1:{_port(server)}/v1", model="m")
    )
    try:
        request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
        async with asyncio.timeout(3):  # the read timeout (the backstop) would be 35 s
            texts = [c.text async for c in provider.stream(request) if isinstance(c, TextDelta)]
        assert texts == ["done"]
    finally:
        await provider.aclose()
        server.close()


async def test_a_closed_port_is_a_refused_connection_not_a_timeout() -> None:
    error = await _failure(f"http://127.0.0.1:{_closed_port()}/v1")
    assert error.cause == "connection_refused"
    assert "connection refused" in str(error) and "timed out" not in str(error)
    assert "http://127.0.0.1:" in str(error)  # where it tried


async def test_an_unknown_host_is_a_dns_failure() -> None:
    error = await _failure("http://no-such-host.invalid/v1")
    assert error.cause == "dns" and "DNS lookup failed" in str(error)


async def test_an_untrusted_certificate_is_a_tls_failure(
    untrusted_tls_server: asyncio.Server,
) -> None:
    error = await _failure(f"https://127.0.0.1:{_port(untrusted_tls_server)}/v1")
    assert error.cause == "tls" and "certificate" in str(error)


async def test_https_to_a_plain_http_server_is_a_tls_failure(
    plain_http_server: asyncio.Server,
) -> None:
    error = await _failure(f"https://127.0.0.1:{_port(plain_http_server)}/v1")
    assert error.cause == "tls" and "TLS handshake failed" in str(error)


async def test_a_server_that_never_answers_the_handshake_is_a_connect_timeout(
    silent_server: asyncio.Server,
) -> None:
    error = await _failure(f"https://127.0.0.1:{_port(silent_server)}/v1", connect_timeout_s=0.3)
    assert error.cause == "timeout" and "timed out connecting" in str(error)


async def test_an_error_status_is_named_with_its_code(fake: ServedFake) -> None:
    fake.script(Script(status=404))
    error = await _failure(fake.url)
    assert error.cause == "status" and error.status == 404 and "HTTP 404" in str(error)


async def test_a_failed_run_answers_502_with_its_cause_and_run(engines: EngineSet) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    settings = assistant_settings(engines, url, provider={"max_retries": 0})
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        response = await ask(client, alice, conversation, "hi")
        problem = response.json()
        assert response.status_code == 502, problem
        assert response.headers["content-type"] == "application/problem+json"
        assert problem["cause"] == "connection_refused"
        assert "connection refused" in problem["detail"]
        run = await client.get(problem["run"], headers=alice.headers)
        assert run.json()["id"] == problem["run_id"]
        assert run.json()["status"] == "failed"
        assert run.json()["error"]["cause"] == "connection_refused"
        # The stream of the same failure carries the same problem as its `error` event.
        streamed = await client.post(
            f"/api/v1/assistant/conversations/{conversation}/messages",
            json={"content": "hi"},
            headers={**alice.headers, "accept": "text/event-stream"},
        )
        assert streamed.status_code == 200
        assert '"cause":"connection_refused"' in streamed.text.replace(" ", "")


async def test_a_provider_too_slow_for_its_first_token_is_a_504(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(engines, fake.url, provider={"max_retries": 0})
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        fake.script(Script(stall_before_s=3))
        response = await ask(client, alice, conversation, "hi")
    assert response.status_code == 504, response.text
    assert response.json()["type"].endswith("/first-token-timeout")
    assert response.json()["run_id"]


async def test_a_refused_connection_is_still_retried(engines: EngineSet) -> None:
    """Refused is transient (a provider restarting): retried like any other outage."""
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    settings = assistant_settings(engines, url, provider={"max_retries": 1})
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        await ask(client, alice, conversation, "hi")
        metrics = (await client.get("/metrics")).text
    retries = [
        line
        for line in metrics.splitlines()
        if line.startswith("steward_provider_retries_total") and 'provider="fake"' in line
    ]
    assert retries and float(retries[0].rsplit(" ", 1)[1]) >= 1, retries
