"""Streams over real sockets: a client that goes away cancels its run; the WebSocket sends,
streams and cancels; `POST /runs/{id}/cancel` stops a run; the `/chat` demo."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.assistant.conftest import ServedFake, assistant_settings, new_conversation
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import DEFAULT_REPLY, Script
from tests.live import live_server
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("clean_state")


async def _run_status(http: httpx.AsyncClient, headers: dict[str, str], run_id: str,
                      want: str, within_s: float = 5) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + within_s
    while True:
        run = (await http.get(f"/api/v1/assistant/runs/{run_id}", headers=headers)).json()
        if run["status"] == want or time.monotonic() > deadline:
            return run  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_client_disconnect_cancels_the_run(engines: EngineSet, fake: ServedFake) -> None:
    fake.script(Script(text=" ".join(f"w{i}" for i in range(200)), delay_s=0.02))
    async with (
        live_server(assistant_settings(engines, fake.url)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        alice = await make_account(http)
        conversation = await new_conversation(http, alice)
        run_id = None
        tokens = 0
        async with aconnect_sse(
            http, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
            json={"content": "long answer"},
            headers={**alice.headers, "Accept": "text/event-stream"},
        ) as source:  # fmt: skip
            async for sse in source.aiter_sse():
                if sse.event == "run":
                    run_id = json.loads(sse.data)["run_id"]
                tokens += sse.event == "token"
                if tokens == 3:
                    break  # leaving the block closes the connection
        assert run_id is not None
        run = await _run_status(http, alice.headers, run_id, "cancelled")
        assert run["status"] == "cancelled"
        assert run["finished_at"] is not None
        # What was streamed before the client left is counted (the provider's usage never
        # came): leaving before the end of every answer must not dodge the quota.
        assert run["usage"]["prompt_tokens"] > 0 and run["usage"]["completion_tokens"] >= 3
        report = (await http.get("/api/v1/assistant/usage", headers=alice.headers)).json()
        assert report["today_total_tokens"] == run["usage"]["total_tokens"]
        # The provider's stream was abandoned too: no answer was stored.
        assert run["message"] is None


@pytest.mark.slow
async def test_websocket_streams_a_run_and_cancels_another(
    engines: EngineSet, fake: ServedFake
) -> None:
    async with (
        live_server(assistant_settings(engines, fake.url)) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        alice = await make_account(http)
        conversation = await new_conversation(http, alice)
        url = base.replace("http://", "ws://") + "/api/v1/assistant/ws"
        async with connect(url, additional_headers=alice.headers) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "message", "conversation_id": conversation,
                                      "content": "hello"}))  # fmt: skip
            seen = []
            while not seen or seen[-1]["type"] != "done":
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            assert seen[0]["type"] == "run" and seen[0]["id"]
            text = "".join(m["data"]["delta"] for m in seen if m["type"] == "token")
            assert text == DEFAULT_REPLY
            assert seen[-1]["data"]["status"] == "succeeded"

            # A thinking model's reasoning arrives first, as `reasoning` messages.
            fake.script(Script(text="It is 4.", reasoning="two and two make four"))
            await ws.send(json.dumps({"type": "message", "conversation_id": conversation,
                                      "content": "2+2?"}))  # fmt: skip
            seen = []
            while not seen or seen[-1]["type"] != "done":
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            kinds = [m["type"] for m in seen]
            assert max(i for i, k in enumerate(kinds) if k == "reasoning") < kinds.index("token")
            assert "".join(m["data"]["delta"] for m in seen if m["type"] == "reasoning") == (
                "two and two make four")  # fmt: skip

            fake.script(Script(text=" ".join(f"w{i}" for i in range(300)), delay_s=0.02))
            await ws.send(json.dumps({"type": "message", "conversation_id": conversation,
                                      "content": "long"}))  # fmt: skip
            run_id = json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]["run_id"]
            await ws.send(json.dumps({"type": "cancel", "run_id": run_id}))
            while (message := json.loads(await asyncio.wait_for(ws.recv(), 5)))["type"] != "done":
                pass
            assert message["data"]["status"] == "cancelled"

            await ws.send("not json")
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert error["type"] == "error" and error["data"]["status"] == 422
        run = await _run_status(http, alice.headers, run_id, "cancelled")
        assert run["status"] == "cancelled"


@pytest.mark.slow
async def test_websocket_close_codes(engines: EngineSet, fake: ServedFake) -> None:
    settings = assistant_settings(engines, fake.url, rate_limit_assistant="1/hour")
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        alice = await make_account(http)
        conversation = await new_conversation(http, alice)
        key = await http.post("/api/v1/api-keys", json={"name": "todos", "scopes": ["todos:read"]},
                              headers=alice.headers)  # fmt: skip
        url = base.replace("http://", "ws://") + "/api/v1/assistant/ws"
        async with connect(url) as ws:  # no credentials, and a first message without any
            await ws.send(json.dumps({"type": "message", "content": "hi"}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        async with connect(url, additional_headers={"x-api-key": key.json()["secret"]}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        async with connect(url, additional_headers=alice.headers) as ws:
            await ws.recv()
            message = {"type": "message", "conversation_id": conversation, "content": "hi"}
            await ws.send(json.dumps(message))

            async def keep_asking() -> None:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
                    await ws.send(json.dumps(message))

            with pytest.raises(ConnectionClosed) as closed:
                await keep_asking()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429


@pytest.mark.slow
async def test_cancel_endpoint_stops_a_run_from_another_process(
    engines: EngineSet, fake: ServedFake
) -> None:
    fake.script(Script(text=" ".join(f"w{i}" for i in range(300)), delay_s=0.02))
    settings = assistant_settings(engines, fake.url)
    async with (
        live_server(settings) as a,
        live_server(settings) as b,
        httpx.AsyncClient(base_url=a, timeout=10) as http_a,
        httpx.AsyncClient(base_url=b, timeout=10) as http_b,
    ):
        alice = await make_account(http_a)
        conversation = await new_conversation(http_a, alice)
        events: list[str] = []

        async def listen() -> None:
            async with aconnect_sse(
                http_a, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
                json={"content": "long"}, headers={**alice.headers, "Accept": "text/event-stream"},
            ) as source:  # fmt: skip
                async for sse in source.aiter_sse():
                    events.append(sse.data if sse.event in ("run", "done") else sse.event)

        listener = asyncio.create_task(listen())
        await wait_until(lambda: events, within_s=5, every_s=0.02, what="the run event")
        run_id = json.loads(events[0])["run_id"]
        cancel = f"/api/v1/assistant/runs/{run_id}/cancel"
        cancelled = await http_b.post(cancel, headers=alice.headers)
        assert cancelled.status_code == 202
        await asyncio.wait_for(listener, 5)
        assert json.loads(events[-1])["status"] == "cancelled"
        assert events.count("token") < 300
        assert (await http_b.post(cancel, headers=alice.headers)).status_code == 409


@pytest.mark.slow
async def test_chat_demo_streams_plain_data_lines(engines: EngineSet, fake: ServedFake) -> None:
    settings = assistant_settings(engines, fake.url, api_key="demo-key-0123456789")
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        refused = await http.get("/chat", params={"message": "hi"})
        assert refused.status_code == 401
        lines = []
        key = {"x-api-key": "demo-key-0123456789"}
        async with http.stream("GET", "/chat", params={"message": "hi"}, headers=key) as response:
            assert response.headers["x-accel-buffering"] == "no"
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(json.loads(line[6:]))
    assert lines[-1] == {"done": True}
    assert "".join(line["token"] for line in lines[:-1]) == DEFAULT_REPLY


@pytest.mark.slow
async def test_chat_demo_needs_credentials_in_production(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(
        engines, fake.url, environment="prod", secret_key="p" * 40, api_key=None
    )
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        refused = await http.get("/chat", params={"message": "hi"})
        assert refused.status_code == 401
        alice = await make_account(http)
        allowed = await http.get("/chat", params={"message": "hi"}, headers=alice.headers)
        assert allowed.status_code == 200
        assert '"done": true' in allowed.text or '"done":true' in allowed.text
