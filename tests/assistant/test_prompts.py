"""Versioned prompts (admin only; runs record the version they used) and token budgets."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from steward.assistant import tokens
from tests.assistant.conftest import ServedFake, ask, new_conversation
from tests.factories import make_account, make_admin

pytestmark = pytest.mark.usefixtures("clean_state")
PROMPTS = "/api/v1/admin/prompts"


async def test_versions_activate_and_roll_back_and_runs_record_them(
    client: httpx.AsyncClient, app: FastAPI, fake: ServedFake
) -> None:
    admin = await make_admin(client, app)
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    # The built-in prompt first: the active prompt is cached, and each change below must
    # reach the very next run.
    assert (await ask(client, alice, conversation, "hi")).json()["run"]["prompt_version"] == 0

    first = await client.post(PROMPTS, headers=admin.headers, json={
        "name": "assistant", "template": "V1 for $user_name", "variables": ["user_name"],
        "activate": True,
    })  # fmt: skip
    assert first.status_code == 201, first.text
    assert (first.json()["version"], first.json()["active"]) == (1, True)
    second = await client.post(PROMPTS, headers=admin.headers, json={
        "name": "assistant", "template": "V2 on $today", "variables": ["today"],
    })  # fmt: skip
    assert (second.json()["version"], second.json()["active"]) == (2, False)

    run = (await ask(client, alice, conversation, "hi")).json()["run"]
    assert run["prompt_version"] == 1
    assert fake.requests[-1]["messages"][0]["content"] == f"V1 for {alice.email}"

    activated = await client.post(f"{PROMPTS}/assistant/versions/2/activate", headers=admin.headers)
    assert activated.json()["active"] is True
    run = (await ask(client, alice, conversation, "hi")).json()["run"]
    assert run["prompt_version"] == 2
    assert fake.requests[-1]["messages"][0]["content"].startswith("V2 on 20")

    rolled = await client.post(f"{PROMPTS}/assistant/rollback", headers=admin.headers)
    assert rolled.json()["version"] == 1
    versions = (await client.get(f"{PROMPTS}/assistant", headers=admin.headers)).json()
    assert [(v["version"], v["active"]) for v in versions] == [(2, False), (1, True)]
    run = (await ask(client, alice, conversation, "hi")).json()["run"]
    assert run["prompt_version"] == 1

    rolled_again = await client.post(f"{PROMPTS}/assistant/rollback", headers=admin.headers)
    assert rolled_again.status_code == 409


async def test_prompt_admin_is_for_admins_and_checks_variables(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await make_admin(client, app)
    alice = await make_account(client)
    body = {"name": "assistant", "template": "Hi $user_name", "variables": ["user_name"]}
    assert (await client.post(PROMPTS, headers=alice.headers, json=body)).status_code == 403
    assert (await client.get(f"{PROMPTS}/assistant", headers=alice.headers)).status_code == 403

    undeclared = await client.post(PROMPTS, headers=admin.headers,
                                   json={**body, "variables": []})  # fmt: skip
    assert undeclared.status_code == 422
    assert "undeclared" in undeclared.json()["detail"]
    unknown = await client.post(PROMPTS, headers=admin.headers,
                                json={**body, "variables": ["password"]})  # fmt: skip
    assert unknown.status_code == 422
    malformed = await client.post(PROMPTS, headers=admin.headers,
                                  json={**body, "template": "costs $5"})  # fmt: skip
    assert malformed.status_code == 422
    missing = await client.post(f"{PROMPTS}/assistant/versions/9/activate", headers=admin.headers)
    assert missing.status_code == 404


def test_trimming_keeps_the_system_prompt_and_the_newest_whole_turns() -> None:
    system = {"role": "system", "content": "be brief"}
    history = []
    for turn in range(30):
        history.append({"role": "user", "content": f"question {turn} " + "pad " * 50})
        history.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{turn}", "type": "function",
             "function": {"name": "list_todos", "arguments": "{}"}}]})  # fmt: skip
        history.append({"role": "tool", "tool_call_id": f"c{turn}", "content": "{}"})
        history.append({"role": "assistant", "content": f"answer {turn}"})
    messages, used = tokens.fit(system, history, budget=1000, model="qwen-plus")
    assert messages[0] == system
    assert used <= 1000
    assert messages[1]["role"] == "user"  # whole turns only: no orphaned tool result
    assert messages[-1] == {"role": "assistant", "content": "answer 29"}
    assert 1 < len(messages) < len(history)
    kept_turns = [m["content"].split()[1] for m in messages if m["role"] == "user"]
    assert kept_turns == [str(n) for n in range(30 - len(kept_turns), 30)]


def test_counts_are_exact_for_known_models_and_padded_for_others() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20
    exact = tokens.count_text(text, "gpt-4-turbo")
    assert exact == 201  # cl100k_base, bundled: no download
    assert tokens.count_text(text, "qwen-plus") > exact
