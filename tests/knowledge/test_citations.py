"""The assistant answers from the user's documents with citations: the offline provider
calls `search_knowledge`, the run emits `citation` events for the sources its answer cites,
and stores them (the JSON reply, `GET /runs/{id}` and the replayed stream show them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from steward.app import create_app
from steward.platform.resources import Resources
from steward.settings import Settings
from tests.assistant.conftest import ask, new_conversation
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import make_account
from tests.knowledge.test_documents import CHINESE, ENGLISH, ingest, upload


@pytest.fixture
def offline_app(vector_engines: EngineSet, vector_state: None) -> FastAPI:
    return create_app(make_settings(vector_engines, assistant_offline_delay_s=0.0))


@pytest.fixture
async def client(offline_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(offline_app) as http:
        yield http


async def test_answers_cite_the_users_documents(
    client: httpx.AsyncClient, vector_settings: Settings
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    resources = Resources.open(vector_settings)
    try:
        for title, body in (("Store policies", ENGLISH), ("会员手册", CHINESE)):
            await ingest(resources, str((await upload(client, alice, title, body))["id"]))
    finally:
        await resources.close()

    conversation = await new_conversation(client, alice)
    answer = await ask(client, alice, conversation, "What do my documents say about refunds?")
    assert answer.status_code == 200, answer.text
    run = answer.json()["run"]
    assert run["status"] == "succeeded"
    citations = run["citations"]
    assert citations and citations[0]["index"] == 1
    assert citations[0]["title"] == "Store policies"
    assert "refund" in citations[0]["snippet"].lower()
    final = answer.json()["messages"][-1]["content"]
    assert "[1]" in final and "thirty days" in final
    tool_result = next(m for m in answer.json()["messages"] if m["role"] == "tool")
    assert orjson.loads(tool_result["content"])["sources"][0]["index"] == 1

    again = await client.get(f"/api/v1/assistant/runs/{run['id']}", headers=alice.headers)
    assert again.json()["citations"] == citations
    replay = await client.get(f"/api/v1/assistant/runs/{run['id']}/events",
                              headers={**alice.headers, "Accept": "text/event-stream"})  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in replay.text.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:") and name:
            events.append((name, orjson.loads(line[5:])))
    cited = [data for event, data in events if event == "citation"]
    assert cited == citations
    names = [event for event, _ in events]
    assert names.index("citation") < names.index("done")

    # Chinese, and Bob, whose search finds nothing of Alice's.
    answer = await ask(client, alice, conversation, "我的文档里积分什么时候过期？")
    assert answer.json()["run"]["citations"][0]["title"] == "会员手册"
    theirs = await ask(client, bob, await new_conversation(client, bob),
                       "What do my documents say about refunds?")  # fmt: skip
    assert theirs.json()["run"]["citations"] == []
    assert "nothing" in theirs.json()["messages"][-1]["content"]
