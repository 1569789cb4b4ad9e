"""Thinking models: their `reasoning_content` deltas reach the user as `reasoning` events
before the answer, stay in the run's log, and are never part of the answer or of the history
sent to the provider later (those providers refuse it there)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from tests.assistant.conftest import ServedFake, api_key, ask, new_conversation
from tests.factories import Account, make_account
from tests.fakes.openai_server import MODEL, Script

pytestmark = pytest.mark.usefixtures("clean_state")

THOUGHT = "The user adds two and two, which makes four."
ANSWER = "Two plus two is 4."


async def _events(
    client: httpx.AsyncClient, method: str, url: str, account: Account, **kwargs: Any
) -> list[tuple[str, dict[str, Any]]]:
    headers = {**account.headers, "Accept": "text/event-stream"}
    async with aconnect_sse(client, method, url, headers=headers, **kwargs) as source:
        return [(sse.event, orjson.loads(sse.data)) async for sse in source.aiter_sse()]


def _text(events: list[tuple[str, dict[str, Any]]], kind: str) -> str:
    return "".join(data["delta"] for name, data in events if name == kind)


async def test_reasoning_streams_first_and_stays_out_of_the_answer_and_history(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text=ANSWER, reasoning=THOUGHT))
    url = f"/api/v1/assistant/conversations/{conversation}/messages"
    events = await _events(client, "POST", url, alice, json={"content": "2+2?"})
    names = [name for name, _ in events]
    assert names[0] == "run" and names[-2:] == ["usage", "done"], names
    assert "reasoning" in names and "token" in names
    assert max(i for i, n in enumerate(names) if n == "reasoning") < names.index("token")
    assert (_text(events, "reasoning"), _text(events, "token")) == (THOUGHT, ANSWER)

    # The run's log keeps the reasoning for a reader that comes back.
    run_id = events[0][1]["run_id"]
    replayed = await _events(client, "GET", f"/api/v1/assistant/runs/{run_id}/events", alice)
    assert _text(replayed, "reasoning") == THOUGHT
    run = (await client.get(f"/api/v1/assistant/runs/{run_id}", headers=alice.headers)).json()
    assert run["reasoning"] == THOUGHT  # stored with the run

    # The stored answer is the answer alone, and the next call's history has no reasoning.
    messages = (await client.get(f"{url}?limit=50", headers=alice.headers)).json()
    stored = [m["content"] for m in messages["items"] if m["role"] == "assistant"]
    assert stored == [ANSWER]
    fake.script(Script(text="ok"))
    assert (await ask(client, alice, conversation, "and 3+3?")).status_code == 200
    sent = fake.requests[-1]["messages"]
    assert any(m.get("content") == ANSWER for m in sent)
    assert THOUGHT not in orjson.dumps(sent).decode()
    assert not any("reasoning_content" in m for m in sent)


async def test_the_gateway_passes_reasoning_through(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    key = {"Authorization": f"Bearer {await api_key(client, alice)}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "2+2?"}]}
    fake.script(Script(text=ANSWER, reasoning=THOUGHT))
    whole = await client.post("/v1/chat/completions", json=body, headers=key)
    assert whole.status_code == 200, whole.text
    message = whole.json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (THOUGHT, ANSWER)

    fake.script(Script(text=ANSWER, reasoning=THOUGHT))
    deltas: list[dict[str, Any]] = []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                             headers=key) as streamed:  # fmt: skip
        assert streamed.status_code == 200
        async for line in streamed.aiter_lines():
            if line.startswith("data: {"):
                deltas += [c["delta"] for c in orjson.loads(line[6:])["choices"]]
    thought = "".join(d.get("reasoning_content") or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    assert (thought, answer) == (THOUGHT, ANSWER)
