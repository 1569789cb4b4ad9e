"""The playground in a real browser: sign-up, live todos, a streamed chat that survives a
reload, knowledge with citations, API keys; at a desktop and a phone size."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from playwright.async_api import Page, Request, Route, expect

from tests.live import LiveServer
from tests.playground.conftest import shot

pytestmark = pytest.mark.slow
PASSWORD = "correct-horse-42"


async def sign_up(page: Page, base: str) -> str:
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto(f"{base}/playground")
    await expect(page.get_by_role("heading", name="Sign in or create an account")).to_be_visible()
    await shot(page, "1-sign-in")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.locator("#who")).to_contain_text(email)
    return email


async def access_token(page: Page) -> str:
    token = await page.evaluate("JSON.parse(sessionStorage.getItem('steward.tokens')).access_token")
    assert isinstance(token, str)
    return token


async def test_todos_change_live_from_the_page_and_from_elsewhere(
    page: Page, server: LiveServer
) -> None:
    await sign_up(page, server)
    await expect(page.locator("#live")).to_have_text("live")
    await page.get_by_label("New todo").fill("Water the plants")
    await page.get_by_label("New todo").press("Enter")
    todo = page.locator("#todo-list li", has_text="Water the plants")
    await expect(todo).to_be_visible()
    # Another client (a phone, a script) adds one: it appears without a reload.
    headers = {"authorization": f"Bearer {await access_token(page)}"}
    async with httpx.AsyncClient(base_url=server) as http:
        created = await http.post("/api/v1/todos", json={"title": "Made elsewhere"},
                                  headers=headers)  # fmt: skip
        assert created.status_code == 201
    await expect(page.locator("#todo-list li", has_text="Made elsewhere")).to_be_visible()
    # A title that is markup stays text: nothing runs, no element is made from it.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    markup = '<img src=x onerror="alert(1)">'
    async with httpx.AsyncClient(base_url=server) as http:
        await http.post("/api/v1/todos", json={"title": markup}, headers=headers)
    await expect(page.locator("#todo-list li label", has_text=markup)).to_be_visible()
    assert await page.locator("#todo-list img").count() == 0 and dialogs == []
    await todo.get_by_role("checkbox").check()
    await expect(todo).to_have_class("done")
    await shot(page, "2-todos")
    await page.get_by_role("button", name="Delete “Made elsewhere”").click()
    await expect(page.locator("#todo-list li", has_text="Made elsewhere")).to_have_count(0)
    async with httpx.AsyncClient(base_url=server) as http:
        listed = (await http.get("/api/v1/todos", headers=headers)).json()
    assert sorted((t["title"], t["done"]) for t in listed["items"]) == [
        (markup, False), ("Water the plants", True)]  # fmt: skip


async def test_a_streamed_answer_resumes_after_a_reload_without_losing_or_repeating(
    page: Page, server: LiveServer
) -> None:
    await sign_up(page, server)
    await page.get_by_role("tab", name="Assistant").click()
    words = " ".join(f"word{i}" for i in range(60))
    await page.get_by_label("Message").fill(words)
    await page.get_by_role("button", name="Send").click()
    answer = page.locator("#messages li.assistant").last
    await expect(answer).to_contain_text("word5 ")  # streaming, far from the end
    assert "word59" not in await answer.inner_text()
    resumed: list[Request] = []
    page.on("request", lambda r: resumed.append(r) if "/events" in r.url else None)
    await page.reload()
    answer = page.locator("#messages li.assistant").last
    await expect(answer).to_have_attribute("data-status", "done", timeout=30_000)
    text = await answer.locator(".text").inner_text()
    expected = ("[offline] No language model is configured, so this is the offline "
                f"assistant. You said: {words}")  # fmt: skip
    assert text == expected  # nothing lost, nothing twice
    assert resumed and (await resumed[0].all_headers()).get("last-event-id")
    await expect(page.locator("#provider")).to_contain_text("Offline assistant")
    # Tools: the assistant adds a todo, which the Todos screen shows live.
    await page.get_by_label("Message").fill("add todo: call Ada")
    await page.get_by_role("button", name="Send").click()
    tool_answer = page.locator("#messages li.assistant").last
    await expect(tool_answer).to_have_attribute("data-status", "done", timeout=30_000)
    await expect(tool_answer.locator(".tool").first).to_contain_text("create_todo")
    await shot(page, "3-assistant")
    await page.get_by_role("tab", name="Todos").click()
    await expect(page.locator("#todo-list li", has_text="call Ada")).to_be_visible()


async def test_knowledge_upload_search_and_a_cited_answer(page: Page, server: LiveServer) -> None:
    await sign_up(page, server)
    await page.get_by_role("tab", name="Knowledge").click()
    await page.get_by_label("Title").fill("Refund policy")
    await page.get_by_label("Text (Markdown)").fill(
        "# Refunds\n\nRefunds are paid within 14 days of the return reaching the warehouse.\n\n"
        "# Shipping\n\nParcels leave the warehouse every weekday morning."
    )
    await page.get_by_role("button", name="Upload").click()
    document = page.locator("#doc-list li", has_text="Refund policy")
    await expect(document).to_have_attribute("data-status", "ready", timeout=60_000)
    await page.get_by_label("Search your documents").fill("how long do refunds take")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#hits li").first).to_contain_text("14 days")
    await shot(page, "4-knowledge")
    await page.get_by_role("tab", name="Assistant").click()
    await page.get_by_label("Message").fill("What do my documents say about refunds?")
    await page.get_by_role("button", name="Send").click()
    answer = page.locator("#messages li.assistant").last
    await expect(answer).to_have_attribute("data-status", "done", timeout=30_000)
    await expect(answer.locator(".citations li").first).to_contain_text("Refund policy")
    assert re.search(r"\[1\]", await answer.locator(".text").inner_text())


async def test_a_document_ready_before_its_upload_answers_is_shown_ready(
    page: Page, server: LiveServer
) -> None:
    """The live `ready` event can overtake the upload's own 202 (the same text again is
    ready at once); the older `queued` must not replace it."""
    await sign_up(page, server)
    await page.get_by_role("tab", name="Knowledge").click()
    await expect(page.locator("#live")).to_have_text("live")
    uploads: list[Route] = []

    async def late(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        response = await route.fetch()
        uploads.append(route)
        await asyncio.sleep(2)  # meanwhile the worker makes it ready and says so live
        await route.fulfill(response=response)

    await page.route("**/api/v1/knowledge/documents", late)
    await page.get_by_label("Title").fill("Overtaken")
    await page.get_by_label("Text (Markdown)").fill("# Returns\n\nReturns are free.")
    await page.get_by_role("button", name="Upload").click()
    document = page.locator("#doc-list li", has_text="Overtaken")
    await expect(document).to_have_attribute("data-status", "ready", timeout=30_000)
    await page.wait_for_timeout(2500)  # the held 202 ("queued") has been applied by now
    assert uploads
    await expect(document).to_have_attribute("data-status", "ready")


async def test_api_keys_are_created_shown_once_and_revoked(page: Page, server: LiveServer) -> None:
    await sign_up(page, server)
    await page.get_by_role("tab", name="API keys").click()
    await page.get_by_label("Name").fill("script")
    await page.get_by_label("todos:write").check()
    await page.get_by_role("button", name="Create key").click()
    await expect(page.locator("#key-secret-value")).to_have_text(re.compile(r"^stw_\S+$"))
    secret = await page.locator("#key-secret-value").inner_text()
    await shot(page, "5-api-keys")
    async with httpx.AsyncClient(base_url=server) as http:
        made = await http.post("/api/v1/todos", json={"title": "by key"},
                               headers={"x-api-key": secret})  # fmt: skip
        assert made.status_code == 201, made.text
        await page.get_by_role("button", name="Revoke key “script”").click()
        await expect(page.locator("#key-list li")).to_have_count(0)
        refused = await http.get("/api/v1/todos", headers={"x-api-key": secret})
        assert refused.status_code == 401


async def test_the_page_works_from_the_keyboard_and_fits_the_screen(
    page: Page, server: LiveServer
) -> None:
    await sign_up(page, server)
    tab = page.get_by_role("tab", name="Todos")
    await tab.focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Assistant")).to_be_focused()
    await expect(page.get_by_role("tab", name="Assistant")).to_have_attribute(
        "aria-selected", "true"
    )
    await expect(page.locator("#chat")).to_be_visible()
    await page.keyboard.press("End")
    await expect(page.locator("#keys")).to_be_visible()
    # Every form control has an accessible name; nothing scrolls sideways.
    unnamed = await page.evaluate("""() => [...document.querySelectorAll('input, textarea, button')]
        .filter((e) => e.offsetParent !== null)
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                       && !e.textContent.trim()).map((e) => e.outerHTML)""")
    assert unnamed == []
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0


async def test_docs_render_with_no_request_leaving_the_server(
    page: Page, server: LiveServer
) -> None:
    outside: list[str] = []

    async def only_here(route: object) -> None:
        request = route.request  # type: ignore[attr-defined]
        if request.url.startswith(str(server)):
            await route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(request.url)
            await route.abort()  # type: ignore[attr-defined]

    await page.route("**/*", only_here)
    await page.goto(f"{server}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Steward")
    await expect(page.locator(".opblock").first).to_be_visible()
    await shot(page, "6-docs")
    await page.goto(f"{server}/redoc")
    await expect(page.locator("h1").first).to_contain_text("Steward")
    await shot(page, "7-redoc")
    assert outside == []
