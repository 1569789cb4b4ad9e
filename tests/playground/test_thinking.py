"""The playground with a thinking model: its reasoning shows while it thinks, folds away when
the answer starts, and the answer's tokens and cost show when it ends. The provider is the
fake, in each provider's dialect, behind a worker configured as `steward run` would be."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from playwright.async_api import Page, expect

from tests.assistant.conftest import ServedFake, fake_server, provider_settings
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.fakes.openai_server import DIALECTS, Script
from tests.live import LiveServer, live_server
from tests.playground.conftest import shot
from tests.playground.test_playground import sign_up
from tests.workers import running_worker

pytestmark = pytest.mark.slow
__all__ = ["fake_server"]  # the fixture, served for this module's worker too

PRICES = {"input": 0.8, "cached_input": 0.16, "output": 2.0, "currency": "CNY"}
THOUGHT = " ".join(f"step{i}" for i in range(40))
ANSWER = "The answer is 42."


@pytest.fixture(scope="module")
def providers(fake_server: ServedFake) -> dict[str, object]:
    return {"qwen": provider_settings(fake_server.url, prices=PRICES, reasoning=True,
                                      first_token_timeout_s=10, idle_timeout_s=10)}  # fmt: skip


@pytest.fixture(scope="module")
def thinking_worker(engines: EngineSet, providers: dict[str, object]) -> Iterator[None]:
    with running_worker(engines, {"ASSISTANT_PROVIDERS": orjson.dumps(providers).decode()}):
        yield


@pytest.fixture
async def server(
    engines: EngineSet, clean_state: None, thinking_worker: None, providers: dict[str, object]
) -> AsyncIterator[LiveServer]:
    settings = make_settings(engines, assistant_providers=providers,
                             rate_limit_assistant="1000/minute")  # fmt: skip
    async with live_server(settings) as base:
        yield base


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reasoning_shows_then_folds_and_the_cost_is_shown(
    page: Page, server: LiveServer, fake_server: ServedFake, dialect: str
) -> None:
    fake_server.reset()
    fake_server.script(Script(text=ANSWER, reasoning=THOUGHT, dialect=dialect, delay_s=0.05,
                              usage=(1200, 300), cached_tokens=1000))  # fmt: skip
    await sign_up(page, server)
    await page.get_by_role("tab", name="Assistant").click()
    await page.get_by_label("Message").fill("what is six times seven?")
    await page.get_by_role("button", name="Send").click()
    answer = page.locator("#messages li.assistant").last
    reasoning = answer.locator("details.reasoning")
    await expect(reasoning).to_contain_text("step3")  # shown while the model thinks
    assert await reasoning.get_attribute("open") is not None
    await shot(page, f"5-reasoning-{dialect}")
    await expect(answer).to_have_attribute("data-status", "done", timeout=30_000)
    assert await answer.locator(".text").inner_text() == ANSWER
    assert await reasoning.get_attribute("open") is None  # folded once the answer came
    assert THOUGHT in await reasoning.locator("p").text_content()
    # 200 uncached and 1,000 cached prompt tokens and 300 output tokens at PRICES.
    cost = (200 * 0.8 + 1000 * 0.16 + 300 * 2.0) / 1_000_000
    await expect(answer.locator(".usage")).to_have_text(
        f"1500 tokens · 40 reasoning · 1000 cached · {cost:.3g} CNY"
    )
    await shot(page, f"5-reasoning-{dialect}-done")
