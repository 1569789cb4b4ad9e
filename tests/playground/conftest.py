"""A real browser (Debian's Chromium, driven by Playwright) on a live Steward with a worker.

CI installs Chromium (.ci/run); elsewhere these tests skip without it. Screenshots of every
screen, at a desktop and a phone size, land in `.steward-test/screenshots/`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from steward.settings import Settings
from tests.conftest import make_settings
from tests.deploy.conftest import require_tool
from tests.engines import EngineSet
from tests.live import LiveServer, live_server
from tests.workers import running_worker

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".steward-test" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
# Words of the offline assistant are this far apart: slow enough to reload mid-answer.
WORD_DELAY_S = 0.06
# Chromium on this closed network: no background connections, no sandbox (root in CI).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip


def playground_settings(engines: EngineSet) -> Settings:
    return make_settings(
        engines,
        assistant_offline_delay_s=WORD_DELAY_S,
        rate_limit_assistant="1000/minute",
        rate_limit_authenticated="10000/minute",
    )


@pytest.fixture(scope="module")
def playground_worker(engines: EngineSet) -> Iterator[None]:
    """Background runs and ingestion need a worker, as under `steward run`."""
    with running_worker(engines, {"ASSISTANT_OFFLINE_DELAY_S": str(WORD_DELAY_S)}):
        yield


@pytest.fixture
async def server(
    engines: EngineSet, clean_state: None, playground_worker: None
) -> AsyncIterator[LiveServer]:
    async with live_server(playground_settings(engines)) as base:
        yield base


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = require_tool("chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(params=["desktop", "phone"])
async def page(request: pytest.FixtureRequest, browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser context (no storage) at a desktop or a phone's viewport."""
    phone = request.param == "phone"
    context = await browser.new_context(
        viewport=PHONE if phone else DESKTOP, is_mobile=phone, has_touch=phone,
        device_scale_factor=2 if phone else 1,
    )  # fmt: skip
    opened = await context.new_page()
    opened.set_default_timeout(15_000)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.size_name = request.param  # type: ignore[attr-defined]
    yield opened
    await context.close()
    assert not errors, f"the page raised: {errors}"


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=SCREENSHOTS / f"{name}-{page.size_name}.png", full_page=True)  # type: ignore[attr-defined]
