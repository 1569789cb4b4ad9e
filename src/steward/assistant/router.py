"""The assistant API: conversations, messages (JSON or SSE), runs and their resumable event
streams, the assistant WebSocket, the prompt admin API, and the `/chat` demo.

Over 400 lines for now: issue 21 splits the assistant package (the run lifecycle into one module,
the routers by resource); until then this module stays whole so that the split moves its code
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import structlog
from fastapi import (
    APIRouter,
    Header,
    Path,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from pydantic import ValidationError

from steward.accounts.deps import (
    Admin,
    OptionalPrincipal,
    Principal,
    RateLimited,
    limit,
)
from steward.accounts.sockets import accept_socket
from steward.assistant import prompts, runner, service
from steward.assistant.deps import (
    AssistantLimited,
    AssistantUser,
    OwnedConversation,
    OwnedConversationWithHistory,
    Runs,
    user_id_of,
)
from steward.assistant.models import RunStatus
from steward.assistant.providers import ChatRequest, ProviderError, TextDelta
from steward.assistant.resilience import Providers
from steward.assistant.schemas import (
    ConversationCreate,
    ConversationRead,
    ConversationUpdate,
    MessageCreate,
    MessageRead,
    PromptCreate,
    PromptRead,
    Reply,
    RunRead,
    UsageDayRead,
    UsageReport,
)
from steward.assistant.streams import RunEvent, RunFollowers, is_after
from steward.jobs import service as jobs
from steward.jobs.deps import CeleryApp
from steward.notifications.hub import CONNECTIONS
from steward.platform.api import API_V1
from steward.platform.deps import Session, resources_of
from steward.platform.errors import (
    Forbidden,
    Gone,
    StewardError,
    TooManyRequests,
    Unauthorized,
    UnprocessableContent,
    problem_body,
)
from steward.platform.inputs import Int32, Text
from steward.platform.pagination import Cursor, Limit, Page, invalid_cursor
from steward.platform.resources import Resources
from steward.platform.sockets import CLOSE_LIFETIME, CLOSE_LIMITED
from steward.platform.sse import EventStream

log = structlog.get_logger(__name__)

router = APIRouter(prefix=f"{API_V1}/assistant", tags=["assistant"], dependencies=[RateLimited])
admin = APIRouter(prefix=f"{API_V1}/admin/prompts", tags=["admin"], dependencies=[RateLimited])
demo = APIRouter(tags=["assistant"])
# WebSockets authenticate (and are limited) in the handler: HTTP dependencies do not apply.
sockets = APIRouter(prefix=f"{API_V1}/assistant", tags=["assistant"])

# Proxies must pass events through as they come (nginx buffers unless told not to).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING_S = 15
# ASCII digits only (`\d` takes any script's), each part within Redis's 64 bits.
ENTRY_ID = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")
# A message's `seq` (bigint): at most 18 digits always fit.
MESSAGE_CURSOR = re.compile(r"^[0-9]{1,18}$")
PromptName = Annotated[Text, Path(max_length=64, description="the prompt's name")]
PromptVersion = Annotated[Int32, Path(description="a version number of the prompt")]
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Reply,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "the reply as JSON, or its events over SSE with `Accept: text/event-stream`",
    }
}


def _sse(entry_id: str | None, event: RunEvent) -> bytes:
    """One run event as SSE, as sse-starlette's ServerSentEvent would encode it, without the
    intermediate object (this runs for every token): the event name is ours and JSON from
    orjson has no line breaks to split."""
    head = b"id: %s\r\n" % entry_id.encode() if entry_id else b""
    return b"%sevent: %s\r\ndata: %s\r\n\r\n" % (
        head,
        event.event.encode(),
        orjson.dumps(event.data),
    )


# Events that are already waiting go out as one write: under load this saves an ASGI send
# (through every middleware) per event; when idle a batch is just the one event.
MAX_BATCH = 256


def _farewell(run_id: uuid.UUID) -> bytes:
    """The last event of a stream the server cuts when it shuts down: where to resume (no
    `id:`, so the client's Last-Event-ID stays the last event it really got)."""
    events = f"{API_V1}/assistant/runs/{run_id}/events"
    problem = problem_body(
        503,
        detail=f"the server is restarting; resume with GET {events} and Last-Event-ID",
        instance=events,
        request_id=None,
        slug="shutting-down",
        extra={"resume": events},
    )
    return _sse(None, RunEvent("error", problem))


def _stream(events: AsyncIterator[bytes], run_id: uuid.UUID, resources: Resources) -> EventStream:
    return EventStream(
        events, ping=PING_S, headers=STREAM_HEADERS, farewell=_farewell(run_id),
        grace_s=resources.settings.shutdown_grace_s,
    )  # fmt: skip


def _drain(queue: asyncio.Queue[Any], first: Any) -> list[Any]:
    batch = [first]
    while len(batch) < MAX_BATCH and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


def _wants_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


# --- conversations -------------------------------------------------------------------------


@router.post("/conversations", status_code=status.HTTP_201_CREATED, response_model=ConversationRead,
             summary="Start a conversation (scope assistant)")  # fmt: skip
async def create_conversation(
    body: ConversationCreate, principal: AssistantUser, session: Session
) -> Any:
    return await service.create_conversation(
        session, owner_id=user_id_of(principal), title=body.title
    )


@router.get("/conversations", summary="Own conversations, newest first (scope assistant)")
async def list_conversations(
    principal: AssistantUser, session: Session, limit: Limit = 20, cursor: Cursor = None
) -> Page[ConversationRead]:
    rows, next_cursor = await service.list_conversations(
        session, owner_id=user_id_of(principal), limit=limit, cursor=cursor
    )
    return Page(items=[ConversationRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/conversations/{conversation_id}", response_model=ConversationRead,
            summary="One own conversation (scope assistant)")  # fmt: skip
async def get_conversation(conversation: OwnedConversation) -> Any:
    return conversation


@router.patch("/conversations/{conversation_id}", response_model=ConversationRead,
              summary="Rename an own conversation (scope assistant)")  # fmt: skip
async def rename_conversation(
    conversation: OwnedConversation, body: ConversationUpdate, session: Session
) -> Any:
    return await service.rename_conversation(session, conversation=conversation, title=body.title)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete an own conversation and its runs (scope assistant)")  # fmt: skip
async def delete_conversation(conversation: OwnedConversation, session: Session) -> None:
    await service.delete_conversation(session, conversation=conversation)


@router.get("/conversations/{conversation_id}/messages",
            summary="A conversation's messages, oldest first (scope assistant)")  # fmt: skip
async def list_messages(
    conversation: OwnedConversation,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MessageRead]:
    after = None
    if cursor is not None:
        if not MESSAGE_CURSOR.match(cursor):
            raise invalid_cursor()
        after = int(cursor)
    rows = await service.list_messages(
        session, conversation_id=conversation.id, limit=limit + 1, after=after
    )
    next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
    return Page(
        items=[MessageRead.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor
    )


# --- messages and runs ---------------------------------------------------------------------


async def _plan(
    resources: Resources,
    session: Session,
    principal: Principal,
    conversation: Any,
    body: MessageCreate,
    recent: list[dict[str, Any]] | None = None,
) -> tuple[service.Plan, service.Preloaded | None]:
    settings = resources.settings
    provider, model = service.choose_provider(
        resources.get(Providers), name=body.provider, model=body.model
    )
    assert principal.user is not None
    await service.check_quota(
        session, user_id=principal.user.id, api_key_id=principal.api_key_id,
        per_user=settings.assistant_daily_tokens_per_user,
        per_key=settings.assistant_daily_tokens_per_key,
    )  # fmt: skip
    return await service.start_run(
        session,
        conversation=conversation,
        user_id=principal.user.id,
        api_key_id=principal.api_key_id,
        scopes=principal.scopes,
        user_name=principal.user.display_name or principal.user.email,
        content=body.content,
        provider=provider,
        model=model,
        prompt_name=settings.assistant_prompt_name,
        max_input_tokens=settings.assistant_max_input_tokens,
        background=body.background,
        cache=resources.cache,
        recent=recent,
    )


@router.post(
    "/conversations/{conversation_id}/messages",
    summary="Send a message; the answer as JSON, or streamed over SSE (scope assistant)",
    responses={
        **SSE_RESPONSE,
        202: {"model": RunRead, "description": "background run queued"},
        422: {"description": "bad input, or the message exceeds the token limit"},
    },
    dependencies=[AssistantLimited],
)  # fmt: skip
async def post_message(
    request: Request,
    owned: OwnedConversationWithHistory,
    body: MessageCreate,
    principal: AssistantUser,
    session: Session,
    runs: Runs,
    celery: CeleryApp,
) -> Response:
    resources = resources_of(request)
    conversation, recent = owned
    plan, preloaded = await _plan(resources, session, principal, conversation, body, recent)
    if body.background:
        # Sent to the worker once the request's transaction has committed.
        await jobs.enqueue(
            session, celery, owner_id=plan.user_id,
            task="steward.assistant.run", kwargs={"plan": plan.to_json()},
        )  # fmt: skip
        run = await service.get_run(session, owner_id=plan.user_id, run_id=plan.run_id)
        return Response(
            service.run_read(run, []).model_dump_json(),
            status_code=status.HTTP_202_ACCEPTED,
            media_type="application/json",
            headers={"Location": f"{API_V1}/assistant/runs/{plan.run_id}"},
        )
    # The provider call starts now; the run's rows are stored and committed meanwhile (the
    # run's own writes wait for this commit, and a failed commit stops the run unrecorded).
    assert preloaded is not None  # an interactive run's prompt and history
    committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    live = runs.start(resources, plan, preloaded, committed)
    # Let the run's task get its provider request going before the rows' write and commit
    # take the loop (the task runs until it first waits).
    await asyncio.sleep(0)
    try:
        await service.store_run(session, plan=plan, prompt=preloaded.prompt,
                                content=body.content, background=False)  # fmt: skip
        await session.commit()
    except BaseException:
        committed.set_result(False)
        raise
    committed.set_result(True)
    if _wants_stream(request):
        return _stream(_live_events(live), plan.run_id, resources)
    async for _ in live.events():
        pass
    run = await service.get_run(session, owner_id=plan.user_id, run_id=plan.run_id)
    messages = await service.run_messages(session, run=run)
    reply = Reply(run=service.run_read(run, messages),
                  messages=[MessageRead.model_validate(m) for m in messages])  # fmt: skip
    return Response(reply.model_dump_json(), media_type="application/json")


async def _live_events(live: runner.LiveRun) -> AsyncIterator[bytes]:
    CONNECTIONS.labels("assistant-sse").inc()
    try:
        async for batch in live.batches(MAX_BATCH):
            yield b"".join(_sse(entry_id, event) for entry_id, event in batch)
    finally:
        CONNECTIONS.labels("assistant-sse").dec()


@router.get(
    "/runs/{run_id}",
    response_model=RunRead,
    summary="A run: status, usage, final message (scope assistant)",
)
async def get_run(run_id: uuid.UUID, principal: AssistantUser, session: Session) -> Any:
    run = await service.get_run(session, owner_id=user_id_of(principal), run_id=run_id)
    return service.run_read(run, await service.run_messages(session, run=run))


@router.post("/runs/{run_id}/cancel", response_model=RunRead, status_code=status.HTTP_202_ACCEPTED,
             summary="Stop a run wherever it executes (scope assistant)")  # fmt: skip
async def cancel_run(
    request: Request, run_id: uuid.UUID, principal: AssistantUser, session: Session, runs: Runs
) -> Any:
    resources = resources_of(request)
    run = await service.get_run(session, owner_id=user_id_of(principal), run_id=run_id)
    await runner.cancel(resources, runs, session, run=run)
    await session.refresh(run)
    return service.run_read(run, [])


@router.get(
    "/runs/{run_id}/events",
    summary="A run's events over SSE, from the start or after Last-Event-ID (scope assistant)",
    responses={200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
               410: {"description": "the events expired; GET the run for its final message"}},
)  # fmt: skip
async def run_events(
    request: Request,
    run_id: uuid.UUID,
    principal: AssistantUser,
    session: Session,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(max_length=48)] = None,
) -> Response:
    resources = resources_of(request)
    run = await service.get_run(session, owner_id=user_id_of(principal), run_id=run_id)
    after = last_event_id_header or last_event_id or "0"
    if after != "0" and not ENTRY_ID.match(after):
        raise UnprocessableContent(
            "Last-Event-ID is not an event id from this stream",
            errors=[{"loc": ["header", "Last-Event-ID"], "msg": "invalid", "type": "value"}],
        )
    stream = runner.run_log(resources)
    if RunStatus(run.status).finished and not await stream.exists(run_id):
        raise Gone(
            f"this run's events have expired; GET {API_V1}/assistant/runs/{run_id} "
            "for its final message",
            extra={"run": f"{API_V1}/assistant/runs/{run_id}"},
        )
    await session.close()  # a stream may last minutes; it holds no connection meanwhile
    followers: RunFollowers = request.app.state.run_followers
    return _stream(_replay(resources, followers, run_id, after), run_id, resources)


async def _replay(
    resources: Resources, followers: RunFollowers, run_id: uuid.UUID, after: str
) -> AsyncIterator[bytes]:
    stream = runner.run_log(resources)
    deadline = time.monotonic() + resources.settings.realtime_max_lifetime_s
    CONNECTIONS.labels("run-sse").inc()
    follower, catch_up = await followers.follow(run_id, after)
    try:
        for entry_id, event in catch_up:
            yield _sse(entry_id, event)
            after = entry_id
            if event.event == "done":
                return
        if not catch_up and await stream.ended_by(run_id, after):
            return  # the reader has seen the run's last event already
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                first = await asyncio.wait_for(follower.queue.get(), min(PING_S, remaining))
            except TimeoutError:
                if not await stream.exists(run_id):
                    return  # expired (or was never written) while we waited
                continue
            chunk = b""
            finished = False
            for entry_id, event in _drain(follower.queue, first):
                if not is_after(entry_id, after):
                    continue  # this reader had it already
                chunk += _sse(entry_id, event)
                after = entry_id
                if event.event == "done":
                    finished = True
                    break
            if chunk:
                yield chunk
            if finished:
                return
    finally:
        followers.leave(follower)
        CONNECTIONS.labels("run-sse").dec()


@router.get("/usage", summary="Own token usage per day and API key, with quotas (scope assistant)")
async def usage(
    request: Request,
    principal: AssistantUser,
    session: Session,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> UsageReport:
    settings = resources_of(request).settings
    rows = await service.usage_days(session, user_id=user_id_of(principal), days=days)
    today = datetime.now(UTC).date()
    total = sum(row.total_tokens for row in rows if row.day == today)
    quota = settings.assistant_daily_tokens_per_user
    return UsageReport(
        items=[UsageDayRead.model_validate(row) for row in rows],
        today_total_tokens=total,
        daily_quota_per_user=quota,
        daily_quota_per_key=settings.assistant_daily_tokens_per_key,
        remaining_today=max(0, quota - total) if quota is not None else None,
    )


# --- WebSocket -----------------------------------------------------------------------------


@sockets.websocket("/ws")
async def assistant_socket(websocket: WebSocket) -> None:
    """Chat over one socket (scope assistant). Send `{"type": "message", "conversation_id",
    "content"}` or `{"type": "cancel", "run_id"}`; receive `{"type": <event>, "id", "data"}`
    with the SSE events' names and data, or `{"type": "error", "data": <problem>}`. Close
    codes: 4401 unauthenticated, 4403 missing scope, 4429 rate limited, 4000 lifetime reached."""
    principal = await accept_socket(websocket, "assistant")
    if principal is None:
        return
    resources = resources_of(websocket)
    runs: runner.ActiveRuns = websocket.app.state.active_runs
    mine: dict[uuid.UUID, runner.LiveRun] = {}
    forwarders: set[asyncio.Task[None]] = set()
    send_lock = asyncio.Lock()

    async def send(payload: dict[str, Any]) -> None:
        async with send_lock:
            await websocket.send_text(orjson.dumps(payload).decode())

    async def forward(live: runner.LiveRun) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            async for entry_id, event in live.events():
                await send({"type": event.event, "id": entry_id, "data": event.data})
        mine.pop(live.run_id, None)

    CONNECTIONS.labels("assistant-ws").inc()
    deadline = time.monotonic() + resources.settings.realtime_max_lifetime_s
    try:
        await send({"type": "ready", "user_id": str(principal.user_id)})
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await websocket.close(code=CLOSE_LIFETIME, reason="maximum lifetime; reconnect")
                return
            try:
                async with asyncio.timeout(remaining):
                    raw = await websocket.receive_text()
            except TimeoutError:
                continue
            try:
                live = await _on_socket_message(websocket, resources, runs, principal, mine, raw)
            except TooManyRequests as exc:
                await websocket.close(code=CLOSE_LIMITED, reason=exc.detail[:100])
                return
            except StewardError as exc:
                problem = problem_body(exc.status, slug=exc.slug, detail=exc.detail,
                                       instance=websocket.url.path, request_id=None)  # fmt: skip
                await send({"type": "error", "data": problem})
                continue
            if live is not None:
                mine[live.run_id] = live
                task = asyncio.create_task(forward(live))
                forwarders.add(task)
                task.add_done_callback(forwarders.discard)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        for live in list(mine.values()):
            live.cancel()
        for task in list(forwarders):
            task.cancel()
        CONNECTIONS.labels("assistant-ws").dec()


async def _on_socket_message(
    websocket: WebSocket,
    resources: Resources,
    runs: runner.ActiveRuns,
    principal: Principal,
    mine: dict[uuid.UUID, runner.LiveRun],
    raw: str,
) -> runner.LiveRun | None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UnprocessableContent("messages are JSON objects") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "cancel":
        try:
            run_id = uuid.UUID(str(message.get("run_id")))
        except ValueError:
            raise UnprocessableContent("run_id is not a UUID") from None
        live = mine.get(run_id)
        if live is None:
            raise UnprocessableContent("no run of this connection has that id")
        live.cancel()
        return None
    if kind != "message":
        raise UnprocessableContent('type must be "message" or "cancel"')
    try:
        body = MessageCreate.model_validate(message)
        conversation_id = uuid.UUID(str(message.get("conversation_id")))
    except (ValidationError, ValueError):
        raise UnprocessableContent(
            "a message needs conversation_id (UUID) and content (1-32000 chars)"
        ) from None
    await limit(websocket, resources.policies.assistant, principal)
    async with resources.transaction() as session:
        conversation = await service.get_conversation(
            session, owner_id=user_id_of(principal), conversation_id=conversation_id
        )
        plan, preloaded = await _plan(resources, session, principal, conversation,
                                      body.model_copy(update={"background": False}))  # fmt: skip
        assert preloaded is not None  # an interactive run's prompt and history
        await service.store_run(session, plan=plan, prompt=preloaded.prompt,
                                content=body.content, background=False)  # fmt: skip
    return runs.start(resources, plan, preloaded)


# --- prompts (admin) -----------------------------------------------------------------------


@admin.get("/{name}", summary="Every version of a prompt, newest first (admin)")
async def prompt_versions(name: PromptName, _: Admin, session: Session) -> list[PromptRead]:
    return [PromptRead.model_validate(r) for r in await prompts.versions(session, name=name)]


@admin.post("", status_code=status.HTTP_201_CREATED, response_model=PromptRead,
            summary="Add a prompt version; `activate` puts it in use (admin)")  # fmt: skip
async def create_prompt(body: PromptCreate, principal: Admin, session: Session) -> Any:
    return await prompts.create(
        session, name=body.name, template=body.template, variables=body.variables,
        created_by=principal.user_id, activate=body.activate,
    )  # fmt: skip


@admin.post("/{name}/versions/{version}/activate", response_model=PromptRead,
            summary="Make a version the active one (admin)")  # fmt: skip
async def activate_prompt(
    name: PromptName, version: PromptVersion, _: Admin, session: Session
) -> Any:
    return await prompts.activate(session, name=name, version=version)


@admin.post("/{name}/rollback", response_model=PromptRead,
            summary="Activate the version before the active one (admin)",
            responses={409: {"description": "no active version, or none before it"}})  # fmt: skip
async def rollback_prompt(name: PromptName, _: Admin, session: Session) -> Any:
    return await prompts.rollback(session, name=name)


# --- /chat demo ----------------------------------------------------------------------------


@demo.get(
    "/chat",
    summary='Quick streaming demo: `data: {"token": ...}` lines, then `data: {"done": true}`',
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat(
    request: Request,
    principal: OptionalPrincipal,
    message: Annotated[Text, Query(min_length=1, max_length=4000)],
) -> Response:
    """Stateless: no conversation is stored. Needs `x-api-key` (the service key or a user key
    with scope assistant) when API_KEY is set, and credentials in production even without
    one (an open endpoint there would spend the provider's money for anyone); rate limited
    per caller either way."""
    resources = resources_of(request)
    settings = resources.settings
    if principal is None and (settings.api_key is not None or settings.is_prod):
        raise Unauthorized("send x-api-key")
    if (
        principal is not None
        and principal.kind != "service"
        and "assistant" not in principal.scopes
    ):
        raise Forbidden("missing scope 'assistant'")
    await limit(request, resources.policies.assistant, principal)
    provider = resources.get(Providers).get(None)
    assert provider is not None
    chat_request = ChatRequest(
        model=provider.config.model,
        messages=[{"role": "user", "content": message}],
        max_tokens=provider.config.max_output_tokens,
    )
    return EventStream(_demo(resources, provider, chat_request), ping=PING_S,
                               headers=STREAM_HEADERS)  # fmt: skip


async def _demo(
    resources: Resources, provider: Any, request: ChatRequest
) -> AsyncIterator[dict[str, str]]:
    try:
        opened = await resources.get(Providers).open(provider, request)
        async for chunk in opened.chunks():
            if isinstance(chunk, TextDelta):
                yield {"data": orjson.dumps({"token": chunk.text}).decode()}
    except ProviderError as exc:
        yield {"data": orjson.dumps({"error": str(exc)}).decode()}
    yield {"data": orjson.dumps({"done": True}).decode()}
