"""Asking the assistant: JSON and SSE replies, recorded runs and usage, tools acting on the
caller's own todos, ownership, token limits, and the offline provider."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from steward.app import create_app
from tests.assistant.conftest import ServedFake, ask, new_conversation
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import DEFAULT_REPLY, MODEL, Script

pytestmark = pytest.mark.usefixtures("clean_state")


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[httpx.Response, list[tuple[str, str, dict[str, Any]]]]:
    events: list[tuple[str, str, dict[str, Any]]] = []
    async with aconnect_sse(client, "POST", url, json=body, headers=headers) as source:
        async for sse in source.aiter_sse():
            events.append((sse.id, sse.event, orjson.loads(sse.data)))
        return source.response, events


async def test_json_reply_records_the_run_and_the_providers_usage(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="Four words of reply", usage=(17, 4)))

    response = await ask(client, alice, conversation, "hello there")

    assert response.status_code == 200, response.text
    body = response.json()
    run = body["run"]
    assert run["status"] == "succeeded"
    assert (run["provider"], run["model"], run["offline"]) == ("fake", MODEL, False)
    assert run["usage"] == {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21,
                            "cached_tokens": 0, "reasoning_tokens": 0,
                            "cost": None, "currency": None}  # no prices configured  # fmt: skip
    assert run["message"]["content"] == "Four words of reply"
    assert run["prompt_version"] == 0
    assert run["first_token_at"] is not None
    sent = fake.requests[-1]
    assert sent["messages"][0]["role"] == "system"
    assert alice.email in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "hello there"}
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    messages = await client.get(
        f"/api/v1/assistant/conversations/{conversation}/messages", headers=alice.headers
    )
    assert [(m["role"], m["content"]) for m in messages.json()["items"]] == [
        ("user", "hello there"),
        ("assistant", "Four words of reply"),
    ]


async def test_history_is_sent_on_the_next_turn(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(Script(text="first answer"), Script(text="second answer"))
    await ask(client, alice, conversation, "first question")
    await ask(client, alice, conversation, "second question")
    roles = [(m["role"], m["content"]) for m in fake.requests[-1]["messages"][1:]]
    assert roles == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]


async def test_sse_reply_streams_events_in_order_with_stream_ids(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    response, events = await sse_events(
        client,
        f"/api/v1/assistant/conversations/{conversation}/messages",
        {**alice.headers, "Accept": "text/event-stream"},
        {"content": "stream please"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    names = [name for _, name, _ in events]
    assert names[0] == "run" and names[-2:] == ["usage", "done"]
    assert set(names[1:-2]) == {"token"}
    assert "".join(data["delta"] for _, name, data in events if name == "token") == DEFAULT_REPLY
    assert events[-1][2]["status"] == "succeeded"
    ids = [entry_id for entry_id, _, _ in events]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert events[0][2]["conversation_id"] == conversation


async def test_tools_read_and_change_only_the_callers_todos(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    await client.post("/api/v1/todos", json={"title": "alice's"}, headers=alice.headers)
    bobs = (await client.post("/api/v1/todos", json={"title": "bob's"}, headers=bob.headers)).json()
    conversation = await new_conversation(client, alice)
    fake.script(
        Script(tool_calls=[("list_todos", {}), ("complete_todo", {"todo_id": bobs["id"]})]),
        Script(tool_calls=[("create_todo", {"title": "made by the assistant"})]),
        Script(text="All done."),
    )
    _, events = await sse_events(
        client,
        f"/api/v1/assistant/conversations/{conversation}/messages",
        {**alice.headers, "Accept": "text/event-stream"},
        {"content": "tidy up"},
    )
    results = [data for _, name, data in events if name == "tool_result"]
    calls = [data for _, name, data in events if name == "tool_call"]
    assert [c["name"] for c in calls] == ["list_todos", "complete_todo", "create_todo"]
    assert [t["title"] for t in results[0]["result"]["todos"]] == ["alice's"]
    assert results[1]["error"] == "no such todo"
    assert results[2]["result"]["todo"]["title"] == "made by the assistant"
    assert events[-1][2]["status"] == "succeeded"

    bob_todo = await client.get(f"/api/v1/todos/{bobs['id']}", headers=bob.headers)
    assert bob_todo.json()["done"] is False
    titles = {
        t["title"]
        for t in (await client.get("/api/v1/todos", headers=alice.headers)).json()["items"]
    }
    assert titles == {"alice's", "made by the assistant"}
    # The model saw each tool's result as a tool message answering its call.
    followup = fake.requests[1]["messages"]
    assert followup[-3]["tool_calls"][0]["function"]["name"] == "list_todos"
    assert [m["tool_call_id"] for m in followup[-2:]] == ["call_0", "call_1"]
    assert {t["function"]["name"] for t in fake.requests[0]["tools"]} == {
        "list_todos", "create_todo", "complete_todo", "update_todo", "search_knowledge",
    }  # fmt: skip


async def test_bad_tool_arguments_go_back_to_the_model(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    fake.script(
        Script(tool_calls=[("create_todo", {"title": ""}), ("no_such_tool", {}),
                           ("update_todo", {"todo_id": "not-a-uuid"})]),
        Script(text="Sorry."),
    )  # fmt: skip
    response = await ask(client, alice, conversation, "make a todo")
    assert response.status_code == 200
    assert response.json()["run"]["status"] == "succeeded"
    tool_messages = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    errors = [orjson.loads(m["content"])["error"] for m in tool_messages]
    assert errors[0].startswith("invalid arguments: title")
    assert errors[1] == "unknown tool 'no_such_tool'"
    assert "todo_id" in errors[2]
    listed = await client.get("/api/v1/todos", headers=alice.headers)
    assert listed.json()["items"] == []


async def test_tool_rounds_are_capped(engines: EngineSet, fake: ServedFake) -> None:
    from tests.assistant.conftest import assistant_settings

    app = create_app(assistant_settings(engines, fake.url, assistant_max_tool_rounds=2))
    async with app_client(app) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        fake.script(*[Script(tool_calls=[("list_todos", {})]) for _ in range(5)])
        response = await ask(client, alice, conversation, "loop forever")
    assert response.json()["run"]["status"] == "succeeded"
    assert len(fake.requests) == 3
    assert [bool(r.get("tools")) for r in fake.requests] == [True, True, False]


async def test_api_key_without_todo_scopes_gets_no_todo_tools(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    created = await client.post(
        "/api/v1/api-keys",
        json={"name": "chat only", "scopes": ["assistant"]},
        headers=alice.headers,
    )
    key = {"x-api-key": created.json()["secret"]}
    conversation = (
        await client.post("/api/v1/assistant/conversations", json={}, headers=key)
    ).json()
    fake.script(Script(tool_calls=[("create_todo", {"title": "sneaky"})]), Script(text="ok"))
    response = await client.post(
        f"/api/v1/assistant/conversations/{conversation['id']}/messages",
        json={"content": "add a todo"}, headers=key,
    )  # fmt: skip
    assert response.status_code == 200
    assert "tools" not in fake.requests[0]
    tool_message = next(m for m in fake.requests[1]["messages"] if m["role"] == "tool")
    assert "needs scope 'todos:write'" in tool_message["content"]
    assert (await client.get("/api/v1/todos", headers=alice.headers)).json()["items"] == []


async def test_another_users_conversation_and_run_are_404(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    bob = await make_account(client)
    conversation = await new_conversation(client, alice)
    run_id = (await ask(client, alice, conversation, "hi")).json()["run"]["id"]
    base = "/api/v1/assistant"
    for method, url in [
        ("GET", f"{base}/conversations/{conversation}"),
        ("GET", f"{base}/conversations/{conversation}/messages"),
        ("POST", f"{base}/conversations/{conversation}/messages"),
        ("DELETE", f"{base}/conversations/{conversation}"),
        ("PATCH", f"{base}/conversations/{conversation}"),
        ("GET", f"{base}/runs/{run_id}"),
        ("GET", f"{base}/runs/{run_id}/events"),
        ("POST", f"{base}/runs/{run_id}/cancel"),
    ]:
        response = await client.request(method, url, headers=bob.headers, json={"content": "x"})
        assert response.status_code == 404, (method, url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    listed = await client.get(f"{base}/conversations", headers=bob.headers)
    assert listed.json()["items"] == []
    assert (await client.get(f"{base}/conversations", headers=alice.headers)).json()["items"]


async def test_too_long_message_is_refused_with_the_limit(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    response = await ask(client, alice, conversation, "word " * 5000)
    assert response.status_code == 422
    problem = response.json()
    assert "the limit is 4000" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "content"]
    assert fake.requests == []
    # Under the per-message limit but over the model's context window.
    response = await ask(client, alice, conversation, "word " * 3000)
    assert response.status_code == 422
    assert "allows" in response.json()["detail"]


async def test_unknown_provider_or_model_is_422(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    for extra, field in (({"provider": "nope"}, "provider"), ({"model": "gpt-99"}, "model")):
        response = await ask(client, alice, conversation, "hi", **extra)
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", field]
    # Offline is not selectable when a real provider is configured.
    response = await ask(client, alice, conversation, "hi", provider="offline")
    assert response.status_code == 422


async def test_offline_provider_is_the_default_without_a_key_and_says_so(
    engines: EngineSet, clean_state: None
) -> None:
    app = create_app(make_settings(engines, assistant_offline_delay_s=0))
    async with app_client(app) as client:
        alice = await make_account(client)
        conversation = await new_conversation(client, alice)
        answer = (await ask(client, alice, conversation, "hello")).json()
        assert answer["run"]["provider"] == "offline" and answer["run"]["offline"] is True
        assert answer["run"]["message"]["content"].startswith("[offline]")
        assert "You said: hello" in answer["run"]["message"]["content"]

        made = (await ask(client, alice, conversation, "add todo: buy milk")).json()
        assert made["run"]["status"] == "succeeded"
        assert [m["role"] for m in made["messages"]] == ["assistant", "tool", "assistant"]
        todos = (await client.get("/api/v1/todos", headers=alice.headers)).json()["items"]
        assert [t["title"] for t in todos] == ["buy milk"]
        assert made["run"]["usage"]["total_tokens"] > 0


async def test_conversations_are_listed_renamed_and_deleted_with_their_runs(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    base = "/api/v1/assistant/conversations"
    first = await new_conversation(client, alice)
    second = await new_conversation(client, alice)
    listed = (await client.get(base, params={"limit": 1}, headers=alice.headers)).json()
    assert [c["id"] for c in listed["items"]] == [second]
    rest = await client.get(base, params={"cursor": listed["next_cursor"]}, headers=alice.headers)
    assert [c["id"] for c in rest.json()["items"]] == [first]

    renamed = await client.patch(
        f"{base}/{first}", json={"title": "Groceries"}, headers=alice.headers
    )
    assert renamed.json()["title"] == "Groceries"
    too_long = await client.patch(
        f"{base}/{first}", json={"title": "x" * 201}, headers=alice.headers
    )
    assert too_long.status_code == 422

    run_id = (await ask(client, alice, first, "hi")).json()["run"]["id"]
    assert (await client.delete(f"{base}/{first}", headers=alice.headers)).status_code == 204
    assert (await client.get(f"{base}/{first}", headers=alice.headers)).status_code == 404
    gone = await client.get(f"/api/v1/assistant/runs/{run_id}", headers=alice.headers)
    assert gone.status_code == 404


async def test_a_run_whose_request_fails_to_commit_stops_and_leaves_nothing(
    client: httpx.AsyncClient, app: Any, fake: ServedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider call starts while the request commits the run; if that commit fails,
    the call is stopped and nothing about the run is stored or left running."""
    import asyncio
    import uuid

    from steward.assistant import repository
    from steward.assistant.models import Message, Run, UsageDay

    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    store_run = repository.store_run

    async def store_run_then_break_the_commit(session: Any, **kwargs: Any) -> Any:
        stored = await store_run(session, **kwargs)
        # A row that cannot be inserted: the commit that stores the run fails with it.
        session.add(Message(conversation_id=uuid.uuid4(), role="user", content="orphan"))
        return stored

    monkeypatch.setattr(repository, "store_run", store_run_then_break_the_commit)
    fake.script(Script(text="a long reply " * 50, delay_s=0.02))  # 150 tokens
    response = await ask(client, alice, conversation, "hello")
    assert response.status_code == 500
    # The reply would take 3 s; the run was stopped instead of streaming to nobody.
    running = list(app.state.active_runs._tasks.values())
    if running:
        _, still = await asyncio.wait(running, timeout=1.0)
        assert not still
    async with app.state.resources.transaction() as session:
        from sqlalchemy import func, select

        assert await session.scalar(select(func.count()).select_from(Run)) == 0
        count = (
            select(func.count())
            .select_from(Message)
            .where(Message.conversation_id == uuid.UUID(conversation))
        )
        assert await session.scalar(count) == 0
        # Nor was any usage recorded for it.
        assert await session.scalar(select(func.count()).select_from(UsageDay)) == 0


async def test_an_answer_is_stored_only_by_what_ended_the_run(
    client: httpx.AsyncClient, app: Any, fake: ServedFake
) -> None:
    """The run's end and its answer are one statement: once a cancel has ended the run, a
    late success records neither its status nor its answer."""
    import uuid

    from sqlalchemy import select

    from steward.assistant import repository
    from steward.assistant.models import Message, Run, RunStatus
    from steward.assistant.providers import Usage

    alice = await make_account(client)
    conversation = await new_conversation(client, alice)
    run_id = uuid.UUID((await ask(client, alice, conversation, "hi")).json()["run"]["id"])
    resources = app.state.resources
    async with resources.transaction() as session:
        run = await session.get(Run, run_id)
        assert run is not None
        run.status = RunStatus.RUNNING.value  # as if still running: the answer may land
    finish = {"run_id": run_id, "usage": Usage(1, 2, 3)}
    async with resources.transaction() as session:
        assert await repository.finish_run(session, status=RunStatus.CANCELLED, **finish)
    async with resources.transaction() as session:
        late = await repository.finish_run(session, status=RunStatus.SUCCEEDED,
                                           answer="too late", **finish)  # fmt: skip
        assert not late
    async with resources.transaction() as session:
        run = await session.get(Run, run_id)
        assert run is not None and run.status == "cancelled"
        answers = select(Message.content).where(Message.run_id == run_id,
                                                Message.role == "assistant")  # fmt: skip
        assert "too late" not in list((await session.execute(answers)).scalars())
        run.status = RunStatus.RUNNING.value
    async with resources.transaction() as session:
        assert await repository.finish_run(session, status=RunStatus.SUCCEEDED,
                                           answer="in time", **finish)  # fmt: skip
    async with resources.transaction() as session:
        stored = list((await session.execute(answers)).scalars())
        assert stored.count("in time") == 1 and "too late" not in stored
