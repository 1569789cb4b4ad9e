"""Each provider's dialect through the real SDK: the fake speaks OpenAI's, DashScope's, Ark's
and DeepSeek's stream, usage and error formats; a run's events, stored messages, usage and
cost are checked for each, and each vendor's error codes are classed as they mean."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from prometheus_client import REGISTRY

from steward.app import create_app
from steward.settings import Settings
from tests.assistant.conftest import ServedFake, api_key, ask, assistant_settings, new_conversation
from tests.conftest import app_client
from tests.engines import EngineSet
from tests.factories import Account, make_account, make_admin
from tests.fakes.openai_server import DIALECTS, Script

pytestmark = pytest.mark.usefixtures("clean_state")

PRICES = {"input": 2.0, "cached_input": 0.5, "output": 8.0, "currency": "USD"}
THOUGHT = "Four is two and two, counted twice over to be sure."
ANSWER = "It is 4."


@pytest.fixture
def settings(engines: EngineSet, fake: ServedFake) -> Settings:
    return assistant_settings(engines, fake.url, provider={"prices": PRICES})


async def _events(
    client: httpx.AsyncClient, conversation: str, account: Account, content: str
) -> list[tuple[str, dict[str, Any]]]:
    url = f"/api/v1/assistant/conversations/{conversation}/messages"
    headers = {**account.headers, "Accept": "text/event-stream"}
    async with aconnect_sse(client, "POST", url, headers=headers, json={"content": content}) as sse:
        return [(event.event, orjson.loads(event.data)) async for event in sse.aiter_sse()]


def _expected_cost(prompt: int, cached: int, completion: int) -> float:
    # Decimal arithmetic, as Steward's: floats would differ in the last digits.
    cost = (
        (prompt - cached) * Decimal("2.0") + cached * Decimal("0.5") + completion * Decimal("8.0")
    ) / 1_000_000
    return float(cost)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_thinking_run_in_each_dialect_streams_stores_and_costs(
    client: httpx.AsyncClient, fake: ServedFake, dialect: str
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    thought_tokens = len(THOUGHT.split())
    fake.script(Script(text=ANSWER, reasoning=THOUGHT, dialect=dialect, usage=(1000, 300),
                       cached_tokens=400))  # fmt: skip
    events = await _events(client, conversation, alice, "2+2?")
    names = [name for name, _ in events]
    assert max(i for i, n in enumerate(names) if n == "reasoning") < names.index("token")
    assert "".join(d["delta"] for n, d in events if n == "reasoning") == THOUGHT
    assert "".join(d["delta"] for n, d in events if n == "token") == ANSWER
    usage = dict(events)["usage"]
    # The fake's completion tokens are `usage`'s (reasoning included, as providers count).
    expected = {
        "prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
        "cached_tokens": 400, "reasoning_tokens": thought_tokens,
        "cost": _expected_cost(1000, 400, 300), "currency": "USD",
    }  # fmt: skip
    assert usage == expected
    run_id = events[0][1]["run_id"]
    run = (await client.get(f"/api/v1/assistant/runs/{run_id}", headers=alice.headers)).json()
    assert run["usage"] == expected and run["reasoning"] == THOUGHT
    assert run["message"]["content"] == ANSWER

    report = (await client.get("/api/v1/assistant/usage", headers=alice.headers)).json()
    (today,) = report["items"]
    assert (today["cached_tokens"], today["reasoning_tokens"]) == (400, thought_tokens)
    assert today["cost"] == pytest.approx(expected["cost"])
    assert (report["currency"], report["today_cost"]) == ("USD", today["cost"])

    # The next call's history is the answer alone: those providers refuse reasoning there.
    fake.script(Script(text="ok", dialect=dialect))
    assert (await ask(client, alice, conversation, "and 3+3?")).status_code == 200
    assert THOUGHT not in orjson.dumps(fake.requests[-1]["messages"]).decode()


@pytest.mark.parametrize(
    ("dialect", "status", "code"),
    [
        ("openai", 429, "rate_limit_exceeded"),
        ("dashscope", 429, "Throttling.RateQuota"),
        ("ark", 429, "RateLimitExceeded.EndpointRPMExceeded"),
        ("ark", 429, "ServerOverloaded"),
        ("deepseek", 503, None),
    ],
)
async def test_rate_limits_in_each_dialect_are_retried(
    client: httpx.AsyncClient, fake: ServedFake, dialect: str, status: int, code: str | None
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(dialect=dialect, status=status, code=code, retry_after=0),
                Script(text=ANSWER, dialect=dialect))  # fmt: skip
    response = await ask(client, alice, conversation, "hello")
    assert response.status_code == 200, response.text
    assert response.json()["run"]["attempts"] >= 1
    assert len(fake.requests) == 2  # the refused call and its retry


@pytest.mark.parametrize(
    ("dialect", "status", "code", "cause"),
    [
        ("openai", 429, "insufficient_quota", "quota"),
        ("deepseek", 402, None, "quota"),
        ("dashscope", 400, "Arrearage", "quota"),
        ("ark", 429, "QuotaExceeded", "quota"),
        ("ark", 403, "AccountOverdueError", "quota"),
        ("dashscope", 400, "DataInspectionFailed", "content_filter"),
        ("ark", 400, "InputTextSensitiveContentDetected", "content_filter"),
        ("openai", 400, "invalid_value", "status"),
    ],
)
async def test_spent_accounts_and_moderation_fail_at_once_named_by_the_providers_code(
    client: httpx.AsyncClient, fake: ServedFake, dialect: str, status: int, code: str | None,
    cause: str,
) -> None:  # fmt: skip
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    spent = {"provider": "fake", "outcome": "quota"}
    before = REGISTRY.get_sample_value("steward_provider_calls_total", spent) or 0.0
    fake.script(Script(dialect=dialect, status=status, code=code))
    events = await _events(client, conversation, alice, "hello")
    error = dict(events)["error"]
    assert len(fake.requests) == 1  # not retried: another try cannot succeed
    after = REGISTRY.get_sample_value("steward_provider_calls_total", spent) or 0.0
    assert after - before == (1 if cause == "quota" else 0)  # what the page alert watches
    assert (error["status"], error["cause"]) == (502, cause)
    assert error.get("provider_code") == code
    if code is not None:
        assert code in error["detail"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_an_error_event_mid_reply_names_the_providers_code(
    client: httpx.AsyncClient, fake: ServedFake, dialect: str
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="partial answer", dialect=dialect, mid_error="InternalError.Algo"))
    events = await _events(client, conversation, alice, "hello")
    error = dict(events)["error"]
    assert (error["cause"], error["provider_code"]) == ("reply", "InternalError.Algo")
    assert "".join(d["delta"] for n, d in events if n == "token") == "partial answer"


@pytest.mark.parametrize(
    ("script", "status"),
    [
        (Script(text="one two three four five six", cut_after=3), "failed"),
        (Script(text="one two three four five six", report_usage=False), "succeeded"),
    ],
    ids=["cut-mid-answer", "no-usage-reported"],
)
async def test_a_call_whose_usage_never_came_is_counted_from_what_it_streamed(
    client: httpx.AsyncClient, fake: ServedFake, script: Script, status: str
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(script)
    events = await _events(client, conversation, alice, "count me")
    streamed = "".join(d["delta"] for n, d in events if n == "token")
    usage = dict(events)["usage"]
    assert dict(events)["done"]["status"] == status
    assert usage["prompt_tokens"] > 10  # the system prompt and the message, as counted
    words = len(streamed.split())  # a token per short word, with the margin for models
    assert words <= usage["completion_tokens"] <= int(words * 1.25) + 1  # not OpenAI's
    assert usage["cost"] == _expected_cost(usage["prompt_tokens"], 0, usage["completion_tokens"])
    report = (await client.get("/api/v1/assistant/usage", headers=alice.headers)).json()
    assert report["today_total_tokens"] == usage["total_tokens"]


async def test_a_daily_cost_quota_refuses_once_spent_and_the_admin_view_adds_up(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(engines, fake.url, provider={"prices": PRICES},
                                  assistant_daily_cost_per_user=0.005)  # fmt: skip
    app: FastAPI = create_app(settings)
    async with app_client(app) as client:
        alice = await make_account(client)
        bob = await make_account(client)
        conversation = await new_conversation(client, alice)
        for _ in range(2):  # 0.0038 each: the second starts under the quota and ends over it
            fake.script(Script(text=ANSWER, usage=(1000, 300), cached_tokens=400))
            assert (await ask(client, alice, conversation, "hi")).status_code == 200
        refused = await ask(client, alice, conversation, "once more")
        assert refused.status_code == 429, refused.text
        assert "daily spending quota of 0.005 USD" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        report = (await client.get("/api/v1/assistant/usage", headers=alice.headers)).json()
        assert report["remaining_cost_today"] == 0.0
        assert report["daily_cost_quota_per_user"] == 0.005

        # Another user is not held by alice's spending.
        bobs = await new_conversation(client, bob)
        fake.script(Script(text=ANSWER, usage=(10, 5)))
        assert (await ask(client, bob, bobs, "hi")).status_code == 200

        assert (await client.get("/api/v1/admin/usage", headers=alice.headers)).status_code == 403
        admin = await make_admin(client, app)
        view = (await client.get("/api/v1/admin/usage", headers=admin.headers)).json()
        (day,) = view["days"]
        assert (day["users"], day["requests"]) == (2, 3)
        assert day["cost"] == pytest.approx(2 * _expected_cost(1000, 400, 300)
                                            + _expected_cost(10, 0, 5))  # fmt: skip
        by_user = {row["email"]: row for row in view["users"]}
        assert by_user[alice.email]["cost"] == pytest.approx(2 * _expected_cost(1000, 400, 300))
        assert by_user[bob.email]["total_tokens"] == 15
        assert view["currency"] == "USD"


async def test_the_gateway_reports_cached_and_reasoning_tokens_and_cost(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    key = {"Authorization": f"Bearer {await api_key(client, alice)}"}
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "2+2?"}]}
    fake.script(Script(text=ANSWER, reasoning=THOUGHT, usage=(1000, 300), cached_tokens=400,
                       dialect="deepseek"))  # fmt: skip
    labels = {"provider": "fake", "currency": "USD"}
    spent_before = REGISTRY.get_sample_value("steward_assistant_cost_total", labels) or 0.0
    usage = (await client.post("/v1/chat/completions", json=body, headers=key)).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 400}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": len(THOUGHT.split())}
    assert (usage["cost"], usage["currency"]) == (_expected_cost(1000, 400, 300), "USD")
    spent = REGISTRY.get_sample_value("steward_assistant_cost_total", labels)
    assert spent == pytest.approx(spent_before + _expected_cost(1000, 400, 300))
    report = (await client.get("/api/v1/assistant/usage", headers=alice.headers)).json()
    assert report["items"][0]["api_key_id"] is not None  # counted against the key
    assert report["items"][0]["cost"] == pytest.approx(_expected_cost(1000, 400, 300))


@pytest.mark.parametrize(
    ("providers", "extra", "words"),
    [
        (
            {"a": {"prices": PRICES}, "b": {"prices": {**PRICES, "currency": "CNY"}}},
            {},
            "more than one currency",
        ),
        ({"a": {}}, {"assistant_daily_cost_per_user": 1.0}, "needs prices"),
        ({"a": {"per_model": {"other-model": {"reasoning": True}}}}, {}, "not offered"),
        ({"a": {"extra_body": {"messages": []}}}, {}, "may not set"),
        (
            {"a": {"per_model": {"m": {"context_window": 1024, "max_output_tokens": 1024}}}},
            {},
            "leaves no room",
        ),
    ],
)
def test_provider_prices_and_models_are_checked_at_start(
    engines: EngineSet, providers: dict[str, Any], extra: dict[str, Any], words: str
) -> None:  # fmt: skip
    configured = {
        name: {"base_url": "http://127.0.0.1:9/v1", "model": "m", **config}
        for name, config in providers.items()
    }
    with pytest.raises(ValueError, match=words):
        Settings(assistant_providers=configured, **extra)
