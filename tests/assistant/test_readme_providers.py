"""The README's provider configurations work: each loads as settings, and each of its models,
run against the fake speaking that vendor's dialect (only `base_url` and the key replaced),
streams, stores and costs what its configuration says."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from steward.app import create_app
from steward.settings import Settings
from steward.settings_providers import ProviderConfig
from tests.assistant.conftest import ServedFake, ask, new_conversation
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import Script

pytestmark = pytest.mark.usefixtures("clean_state")

README = Path(__file__).resolve().parents[2] / "README.md"
DIALECT = {"openai": "openai", "qwen": "dashscope", "ark": "ark", "deepseek": "deepseek",
           "local": "openai"}  # fmt: skip


def readme_providers() -> dict[str, dict[str, Any]]:
    block = README.read_text().split("```bash providers\n", 1)[1].split("```", 1)[0]
    found: dict[str, dict[str, Any]] = {}
    for raw in re.findall(r"ASSISTANT_PROVIDERS='(.*?)'", block, flags=re.S):
        found.update(orjson.loads(raw))
    return found


def test_the_readme_configures_each_named_provider() -> None:
    providers = readme_providers()
    assert set(providers) == set(DIALECT)
    for name, config in providers.items():
        Settings(assistant_providers={name: config})  # raises on anything invalid


@pytest.mark.parametrize("name", sorted(DIALECT))
async def test_each_readme_provider_runs_against_its_dialect(
    engines: EngineSet, fake: ServedFake, name: str
) -> None:
    config = {**readme_providers()[name], "base_url": fake.url, "api_key": "test-key"}
    config.pop("api_key_env", None)
    settings = make_settings(engines, assistant_providers={name: config},
                             rate_limit_assistant="1000/minute")  # fmt: skip
    parsed = ProviderConfig.model_validate(config)
    async with app_client(create_app(settings)) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        for model in [parsed.model, *parsed.models]:
            spec = parsed.spec(name, model)
            extra = dict.fromkeys(parsed.extra_body_allowed[:1], True)
            thought = "thinking hard" if spec.reasoning else None
            fake.script(Script(text="ok", reasoning=thought, dialect=DIALECT[name],
                               usage=(1000, 100), cached_tokens=200))  # fmt: skip
            response = await ask(client, alice, conversation, "hi", model=model,
                                 extra_body=extra or None)  # fmt: skip
            assert response.status_code == 200, (model, response.text)
            run = response.json()["run"]
            sent = fake.requests[-1]
            assert sent["model"] == model
            assert sent[parsed.output_limit_field] == spec.max_output_tokens
            assert all(sent[key] == value for key, value in {**parsed.extra_body, **extra}.items())
            assert ("tools" in sent) == spec.tools
            assert (run["reasoning"] is not None) == spec.reasoning
            usage = run["usage"]
            assert usage["cached_tokens"] == 200
            if spec.prices is None:
                assert usage["cost"] is None
                continue
            cached = spec.prices.cached_input
            price = Decimal(str(spec.prices.input if cached is None else cached))
            expected = (800 * Decimal(str(spec.prices.input)) + 200 * price
                        + 100 * Decimal(str(spec.prices.output))) / 1_000_000  # fmt: skip
            assert (usage["cost"], usage["currency"]) == (float(expected), spec.prices.currency)
