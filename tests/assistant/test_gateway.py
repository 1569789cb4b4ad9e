"""The OpenAI-compatible gateway, driven by the official `openai` SDK, unchanged; daily usage
and quotas, which must match what the provider reported exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import openai
import pytest

from tests.assistant.conftest import ServedFake, api_key, ask, assistant_settings, new_conversation
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import DEFAULT_REPLY, MODEL, Script
from tests.live import live_server

pytestmark = pytest.mark.usefixtures("clean_state")


@pytest.mark.slow
async def test_the_official_sdk_works_against_the_gateway(
    engines: EngineSet, fake: ServedFake
) -> None:
    async with (
        live_server(assistant_settings(engines, fake.url)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        alice = await make_account(http)
        secret = await api_key(http, alice, ("assistant",))
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
        models = await sdk.models.list()
        assert [m.id for m in models.data] == [MODEL, "wordllama-l2-supercat-256"]

        # Embeddings, as the SDK asks for them by default (base64) and as floats.
        texts = ["refund policy", "退款政策", "refund policy"]
        packed = await sdk.embeddings.create(model="wordllama-l2-supercat-256", input=texts)
        floats = await sdk.embeddings.create(model="wordllama-l2-supercat-256", input=texts,
                                             encoding_format="float")  # fmt: skip
        for result in (packed, floats):
            vectors = [item.embedding for item in result.data]
            assert [len(v) for v in vectors] == [256, 256, 256]
            assert vectors[0] == pytest.approx(vectors[2])  # same text, same vector
            assert vectors[0] != pytest.approx(vectors[1])
            assert result.usage.prompt_tokens > 0
        assert packed.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
        with pytest.raises(openai.NotFoundError):
            await sdk.embeddings.create(model="text-embedding-3-small", input="x")
        with pytest.raises(openai.BadRequestError):
            await sdk.embeddings.create(model="wordllama-l2-supercat-256", input=[])

        fake.script(Script(text="plain answer", usage=(11, 2)))
        whole = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0.2
        )
        assert whole.choices[0].message.content == "plain answer"
        assert (whole.usage.prompt_tokens, whole.usage.total_tokens) == (11, 13)
        assert fake.requests[-1]["temperature"] == 0.2

        parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
        weather = {
            "type": "function",
            "function": {"name": "get_weather", "parameters": parameters},
        }
        fake.script(Script(tool_calls=[("get_weather", {"city": "Oslo"})], usage=(20, 5)))
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=[weather],
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        name, arguments, usage, finish = "", "", None, None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
        assert (name, json.loads(arguments), finish) == (
            "get_weather",
            {"city": "Oslo"},
            "tool_calls",
        )
        assert usage is not None and usage.total_tokens == 25
        assert fake.requests[-1]["tools"] == [weather]

        text = ""
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert text == DEFAULT_REPLY

        report = (await http.get("/api/v1/assistant/usage", headers=alice.headers)).json()
        assert report["today_total_tokens"] == 13 + 25 + fake_usage_total(fake)
        assert [row["requests"] for row in report["items"]] == [3]


def fake_usage_total(fake: ServedFake) -> int:
    """What the fake reported for its default reply to the last request."""
    last = fake.requests[-1]
    prompt = sum(len(str(m.get("content") or "").split()) for m in last["messages"])
    return prompt + len(DEFAULT_REPLY.split(" "))


@pytest.mark.slow
async def test_gateway_errors_use_openais_shape(engines: EngineSet, fake: ServedFake) -> None:
    async with (
        live_server(assistant_settings(engines, fake.url)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        alice = await make_account(http)
        todo_key = await api_key(http, alice, ("todos:read",))
        good_key = await api_key(http, alice, ("assistant",))
        for secret, error in (("wrong", openai.AuthenticationError),
                              (todo_key, openai.PermissionDeniedError)):  # fmt: skip
            sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
            with pytest.raises(error):
                await sdk.models.list()
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=good_key, max_retries=0)
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.chat.completions.create(
                model="gpt-9", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            await sdk.chat.completions.create(model=MODEL, messages=[])
        raw = await http.post("/v1/chat/completions", json={"model": MODEL},
                              headers={"Authorization": f"Bearer {good_key}"})  # fmt: skip
        assert raw.status_code == 400
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
        for malformed in ({"role": "tool"}, {"role": "tool", "content": "x"},
                          {"role": "user"}, {"role": "assistant"}):  # fmt: skip
            refused = await http.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": [malformed]},
                headers={"Authorization": f"Bearer {good_key}"},
            )  # fmt: skip
            assert refused.status_code == 400, (malformed, refused.text)
            assert refused.json()["error"]["param"].startswith("messages.0")
        fake.script(*[Script(status=500) for _ in range(3)])
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )


@pytest.mark.slow
async def test_daily_quota_refuses_before_calling_the_provider(
    engines: EngineSet, fake: ServedFake
) -> None:
    settings = assistant_settings(engines, fake.url, assistant_daily_tokens_per_user=50)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
        alice = await make_account(http)
        bob = await make_account(http)
        conversation = await new_conversation(http, alice)
        fake.script(Script(text="x", usage=(30, 10)), Script(text="y", usage=(8, 2)))
        assert (await ask(http, alice, conversation, "one")).status_code == 200
        assert (await ask(http, alice, conversation, "two")).status_code == 200
        calls = len(fake.requests)
        refused = await ask(http, alice, conversation, "three")
        assert refused.status_code == 429
        assert refused.json()["type"].endswith("/quota-exceeded")
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        assert len(fake.requests) == calls

        secret = await api_key(http, alice, ("assistant",))
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert limited.value.code == "insufficient_quota"
        assert len(fake.requests) == calls

        report = (await http.get("/api/v1/assistant/usage", headers=alice.headers)).json()
        assert report["today_total_tokens"] == 50
        assert report["remaining_today"] == 0
        assert report["items"] == [{
            "day": datetime.now(UTC).date().isoformat(), "api_key_id": None, "requests": 2,
            "prompt_tokens": 38, "completion_tokens": 12, "total_tokens": 50,
            "cached_tokens": 0, "reasoning_tokens": 0, "cost": 0.0,  # no prices configured
        }]  # fmt: skip
        # Bob's day is his own.
        bobs = await new_conversation(http, bob)
        assert (await ask(http, bob, bobs, "hi")).status_code == 200
