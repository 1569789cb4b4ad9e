"""Structured output (a JSON Schema answer, validated, one repair round), vendor parameters
(`extra_body`, allow-listed per provider) and the model catalogue, through the real SDK."""

from __future__ import annotations

import functools
import uuid
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from steward.app import create_app
from steward.assistant.plan import Plan
from steward.settings import Settings
from tests.assistant.conftest import ServedFake, api_key, ask, assistant_settings, new_conversation
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.fakes.openai_server import MODEL, Script

pytestmark = pytest.mark.usefixtures("clean_state")

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "priority": {"type": "integer", "minimum": 1}},
    "required": ["title", "priority"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "todo", "schema": SCHEMA, "strict": True}}
GOOD = '{"title": "call Ada", "priority": 2}'


@pytest.fixture
def settings(engines: EngineSet, fake: ServedFake) -> Settings:
    return assistant_settings(engines, fake.url, provider={
        "models": ["json-mode-model", "plain-model"],
        "extra_body": {"enable_search": False},
        "extra_body_allowed": ["enable_thinking", "thinking"],
        "per_model": {
            "json-mode-model": {"structured_output": "json_object", "context_window": 2048,
                                "reasoning": True},
            "plain-model": {"tools": False, "max_output_tokens": 64},
        },
    })  # fmt: skip


async def _events(
    client: httpx.AsyncClient, account: Account, conversation: str, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    url = f"/api/v1/assistant/conversations/{conversation}/messages"
    headers = {**account.headers, "Accept": "text/event-stream"}
    async with aconnect_sse(client, "POST", url, headers=headers, json=body) as source:
        return [(sse.event, orjson.loads(sse.data)) async for sse in source.aiter_sse()]


async def test_a_schema_answer_is_asked_for_and_stored(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text=GOOD))
    response = await ask(client, alice, conversation, "a todo for Ada", response_format=FORMAT)
    assert response.status_code == 200, response.text
    assert orjson.loads(response.json()["run"]["message"]["content"]) == orjson.loads(GOOD)
    (sent,) = fake.requests
    assert sent["response_format"] == FORMAT
    assert sent["enable_search"] is False  # the provider's own vendor parameters


async def test_a_wrong_answer_gets_one_repair_round(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    wrong = '{"title": "call Ada", "priority": 0}'
    fake.script(Script(text=wrong), Script(text=GOOD))
    events = await _events(client, alice, conversation,
                           {"content": "a todo", "response_format": FORMAT})  # fmt: skip
    names = [name for name, _ in events]
    assert names.count("repair") == 1 and names[-1] == "done"
    repair = dict(events)["repair"]
    assert any("priority" in problem for problem in repair["problems"]), repair
    assert dict(events)["done"]["status"] == "succeeded"
    # The repair round shows the model its answer and what is wrong with it.
    retry = fake.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": wrong}
    assert "priority" in retry[-1]["content"] and retry[-1]["role"] == "user"
    run_id = events[0][1]["run_id"]
    run = (await client.get(f"/api/v1/assistant/runs/{run_id}", headers=alice.headers)).json()
    assert run["message"]["content"] == GOOD
    # Neither the wrong answer nor the repair request is part of the conversation.
    listed = await client.get(f"/api/v1/assistant/conversations/{conversation}/messages",
                              headers=alice.headers)  # fmt: skip
    contents = [m["content"] for m in listed.json()["items"]]
    assert wrong not in contents and GOOD in contents


async def test_two_wrong_answers_fail_the_run_clearly(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="Sure! Here it is."), Script(text='{"title": 5}'))
    response = await ask(client, alice, conversation, "a todo", response_format=FORMAT)
    problem = response.json()
    assert (response.status_code, problem["cause"]) == (502, "schema"), problem
    assert problem["type"].endswith("/invalid-output")
    assert "title" in problem["detail"]
    assert len(fake.requests) == 2
    run = (await client.get(problem["run"], headers=alice.headers)).json()
    assert (run["status"], run["message"]) == ("failed", None)


async def test_a_json_mode_model_gets_the_schema_as_an_instruction(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text=f"```json\n{GOOD}\n```"))  # a fenced answer is read inside
    response = await ask(client, alice, conversation, "a todo", response_format=FORMAT,
                         model="json-mode-model")  # fmt: skip
    assert response.json()["run"]["status"] == "succeeded", response.text
    (sent,) = fake.requests
    assert sent["response_format"] == {"type": "json_object"}
    assert '"priority"' in sent["messages"][0]["content"]  # the schema, in the system message


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "^(a+)+$"}, "not supported"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "not supported"),
        ({"type": "nonsense"}, "not a valid JSON Schema"),
        ({"enum": ["x" * 1000] * 20}, "over 16384 bytes"),
        ({"$ref": "https://example.com/schema.json"}, "only references within the schema"),
        ({"$ref": 5}, "only references within the schema"),
        (functools.reduce(lambda inner, _: {"not": inner}, range(300), {}), "nests deeper"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "itself without end"),
        ({"$ref": "#/$defs/missing"}, "does not define"),
    ],
)
async def test_schemas_that_cannot_be_used_are_refused_before_any_call(
    client: httpx.AsyncClient, fake: ServedFake, schema: dict[str, Any], words: str
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    wanted = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    response = await ask(client, alice, conversation, "hi", response_format=wanted)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert fake.requests == []


async def test_vendor_parameters_are_allow_listed_per_provider(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="ok"))
    thinking = {"enable_thinking": True, "thinking": {"type": "enabled"}}
    response = await ask(client, alice, conversation, "hi", extra_body=thinking)
    assert response.status_code == 200, response.text
    assert {key: fake.requests[0][key] for key in thinking} == thinking

    refused = await ask(client, alice, conversation, "hi",
                        extra_body={"enable_thinking": True, "temperature": 2, "n": 5})  # fmt: skip
    assert refused.status_code == 422
    assert "['n', 'temperature']" in refused.json()["detail"]
    assert [e["loc"] for e in refused.json()["errors"]] == [
        ["body", "extra_body", "n"], ["body", "extra_body", "temperature"]]  # fmt: skip
    assert len(fake.requests) == 1


async def test_the_catalogue_shows_each_models_limits_and_capabilities(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    listed = await client.get("/api/v1/assistant/models", headers=alice.headers)
    assert listed.status_code == 200, listed.text
    assert listed.json()["next_cursor"] is None
    models = {m["model"]: m for m in listed.json()["items"]}
    assert set(models) == {MODEL, "json-mode-model", "plain-model"}
    assert models[MODEL]["default"] and not models["plain-model"]["default"]
    json_mode, plain = models["json-mode-model"], models["plain-model"]
    assert (json_mode["context_window"], json_mode["reasoning"]) == (2048, True)
    assert json_mode["structured_output"] == "json_object"
    assert (plain["tools"], plain["max_output_tokens"]) == (False, 64)
    assert models[MODEL]["context_window"] == 4096  # the provider's default

    key = {"Authorization": f"Bearer {await api_key(client, alice)}"}
    narrow = {"x-api-key": await api_key(client, alice, ("todos:read",))}
    assert (await client.get("/api/v1/assistant/models", headers=narrow)).status_code == 403
    assert (await client.get("/api/v1/assistant/models")).status_code == 401
    served = (await client.get("/v1/models", headers=key)).json()["data"]
    plain = next(m for m in served if m["id"] == "plain-model")
    assert plain["capabilities"] == {"reasoning": False, "tools": False, "images": False}
    assert plain["max_output_tokens"] == 64

    # A model without tools is offered none, and its output limit is its own.
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="ok"))
    await ask(client, alice, conversation, "hi", model="plain-model")
    assert "tools" not in fake.requests[-1] and fake.requests[-1]["max_tokens"] == 64


async def test_the_gateway_passes_formats_and_allowed_vendor_parameters(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    key = {"Authorization": f"Bearer {await api_key(client, alice)}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "a todo"}],
            "response_format": FORMAT, "enable_thinking": False, "user": "u-1",
            "frequency_penalty": 0.5}  # fmt: skip
    fake.script(Script(text=GOOD))
    answered = await client.post("/v1/chat/completions", json=body, headers=key)
    assert answered.status_code == 200, answered.text
    sent = fake.requests[-1]
    assert sent["response_format"] == FORMAT and sent["enable_thinking"] is False
    assert "frequency_penalty" not in sent and "user" not in sent  # accepted, not passed on

    refused = await client.post("/v1/chat/completions", headers=key,
                                json={**body, "enable_search": True, "top_k": 3})  # fmt: skip
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", "enable_search")
    assert "['enable_search', 'top_k']" in error["message"]


def test_a_plan_keeps_its_format_and_vendor_parameters_for_a_worker() -> None:
    plan = Plan(
        run_id=uuid.uuid4(), conversation_id=uuid.uuid4(), user_id=uuid.uuid4(),
        api_key_id=None, scopes=frozenset({"assistant"}), user_name="a", provider="fake",
        model=MODEL, prompt_name="assistant", response_format=FORMAT,
        extra_body={"enable_thinking": True},
    )  # fmt: skip
    assert Plan.from_json(orjson.loads(orjson.dumps(plan.to_json()))) == plan


async def test_a_model_without_structured_output_refuses_a_schema_up_front(
    engines: EngineSet,
) -> None:
    # The offline assistant answers in canned words: refused, not failed after two calls.
    async with app_client(create_app(make_settings(engines))) as offline:
        alice = await make_account(offline)
        conversation = await new_conversation(offline, alice)
        response = await ask(offline, alice, conversation, "hi", response_format=FORMAT)
        assert response.status_code == 422, response.text
        assert "offline/offline does not give structured output" in response.json()["detail"]
        models = (await offline.get("/api/v1/assistant/models", headers=alice.headers)).json()
        assert models["items"][0]["structured_output"] == "none"


async def test_vendor_parameters_nested_past_the_encoder_are_refused(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    deep: Any = True
    for _ in range(300):
        deep = [deep]
    refused = await ask(client, alice, conversation, "hi", extra_body={"thinking": deep})
    assert refused.status_code == 422, refused.text
    key = {"Authorization": f"Bearer {await api_key(client, alice)}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": deep}]}
    answered = await client.post("/v1/chat/completions", json=body, headers=key)
    assert answered.status_code == 400, answered.text
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "thinking": deep}
    answered = await client.post("/v1/chat/completions", json=body, headers=key)
    assert answered.status_code == 400, answered.text
    assert fake.requests == []
