"""Messages and the runs they start: the answer as JSON or streamed over SSE, a run's state,
its cancel and its events from any point (`Last-Event-ID`) (scope assistant)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from steward.accounts.deps import CurrentUserId
from steward.accounts.limits import RateLimited
from steward.assistant import runs, service
from steward.assistant.deps import (
    AssistantLimited,
    AssistantUser,
    ConversationId,
    Followers,
    Runs,
    sender_of,
)
from steward.assistant.resilience import Providers
from steward.assistant.schemas import MessageCreate, ModelRead, Reply, RunRead
from steward.assistant.streams import RunEvent
from steward.platform.api import API_V1
from steward.platform.deps import Session, resources_of
from steward.platform.errors import (
    PROBLEM_BASE,
    UnprocessableContent,
    problem_body,
    problem_response,
)
from steward.platform.pagination import Page
from steward.platform.resources import Resources
from steward.platform.streaming import sse_event, sse_response

router = APIRouter(prefix=f"{API_V1}/assistant", tags=["assistant"], dependencies=[RateLimited])

# ASCII digits only (`\d` takes any script's), each part within Redis's 64 bits.
ENTRY_ID = re.compile(r"^[0-9]{1,19}-[0-9]{1,19}$")
# Events that are already waiting go out as one write: under load this saves an ASGI send
# (through every middleware) per event; when idle a batch is just the one event.
MAX_BATCH = 256
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Reply,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "the reply as JSON, or its events over SSE with `Accept: text/event-stream`",
    }
}


def _events_url(run_id: uuid.UUID) -> str:
    return f"{API_V1}/assistant/runs/{run_id}/events"


def _farewell(run_id: uuid.UUID) -> bytes:
    """The last event of a stream the server cuts when it shuts down: where to resume (no
    `id:`, so the client's Last-Event-ID stays the last event it really got)."""
    events = _events_url(run_id)
    problem = problem_body(
        503,
        detail=f"the server is restarting; resume with GET {events} and Last-Event-ID",
        instance=events,
        request_id=None,
        slug="shutting-down",
        extra={"resume": events},
    )
    return sse_event("error", problem)


def _encode(batch: list[tuple[str | None, RunEvent]]) -> bytes:
    return b"".join(sse_event(event.event, event.data, event_id=entry) for entry, event in batch)


def _stream(
    resources: Resources,
    batches: AsyncIterator[list[tuple[str | None, RunEvent]]],
    run_id: uuid.UUID,
    transport: str,
) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        async for batch in batches:
            yield _encode(batch)

    return sse_response(
        chunks(), transport=transport, lifetime_s=resources.settings.realtime_max_lifetime_s,
        farewell=_farewell(run_id), grace_s=resources.settings.shutdown_grace_s,
    )  # fmt: skip


@router.post(
    "/conversations/{conversation_id}/messages",
    summary="Send a message; the answer as JSON, or streamed over SSE (scope assistant)",
    responses={
        **SSE_RESPONSE,
        202: {"model": RunRead, "description": "background run queued"},
        404: {"description": "no such conversation"},
        502: {"description": "the provider failed (refused, DNS, TLS, an error status...): "
                             "`run_id`, `cause`"},
        503: {"description": "the provider's circuit breaker is open, or a dependency is down"},
        504: {"description": "the provider was too slow (first token, stall, run time limit)"},
        422: {"description": "bad input, or the message exceeds the token limit"},
    },
    dependencies=[AssistantLimited],
)  # fmt: skip
async def post_message(
    request: Request,
    conversation_id: ConversationId,
    body: MessageCreate,
    principal: AssistantUser,
    owner_id: CurrentUserId,
    active: Runs,
) -> Response:
    resources = resources_of(request)
    sender = sender_of(principal)
    if body.background:
        run = await runs.queue(
            resources, sender=sender, conversation_id=conversation_id, message=body
        )
        return Response(
            run.model_dump_json(),
            status_code=status.HTTP_202_ACCEPTED,
            media_type="application/json",
            headers={"Location": f"{API_V1}/assistant/runs/{run.id}"},
        )
    live = await runs.start(
        resources, active, sender=sender, conversation_id=conversation_id, message=body
    )
    if "text/event-stream" in request.headers.get("accept", ""):
        return _stream(resources, live.batches(MAX_BATCH), live.run_id, "assistant-sse")
    reply = await runs.reply(resources, live, owner_id=owner_id)
    if reply.run.status == "failed":
        return _failed(request, reply.run)
    return Response(reply.model_dump_json(), media_type="application/json")


def _failed(request: Request, run: RunRead) -> Response:
    """A run that failed answers its error as the problem it is (502, 503 or 504: the
    provider, not the request, failed), with the run to look at; not a 200."""
    error = run.error or {}
    code = error.get("status")
    status_code = code if isinstance(code, int) and 500 <= code <= 599 else 502
    slug = str(error.get("type", "")).removeprefix(PROBLEM_BASE) or None
    extra: dict[str, Any] = {"run_id": str(run.id), "run": f"{API_V1}/assistant/runs/{run.id}"}
    for key in ("cause", "provider_code"):
        if value := error.get(key):
            extra[key] = value
    return problem_response(
        request, status_code, detail=error.get("detail") or "the run failed", slug=slug,
        extra=extra,
    )  # fmt: skip


@router.get(
    "/runs/{run_id}",
    response_model=RunRead,
    summary="A run: status, usage, final message (scope assistant)",
)
async def get_run(
    run_id: uuid.UUID, _: AssistantUser, owner_id: CurrentUserId, session: Session
) -> Any:
    return await service.read_run(session, owner_id=owner_id, run_id=run_id)


@router.post("/runs/{run_id}/cancel", response_model=RunRead, status_code=status.HTTP_202_ACCEPTED,
             summary="Stop a run wherever it executes (scope assistant)")  # fmt: skip
async def cancel_run(
    request: Request, run_id: uuid.UUID, _: AssistantUser, owner_id: CurrentUserId, active: Runs
) -> Any:
    return await runs.cancel(resources_of(request), active, owner_id=owner_id, run_id=run_id)


@router.get(
    "/runs/{run_id}/events",
    summary="A run's events over SSE, from the start or after Last-Event-ID (scope assistant)",
    responses={200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
               410: {"description": "the events expired; GET the run for its final message"}},
)  # fmt: skip
async def run_events(
    request: Request,
    run_id: uuid.UUID,
    _: AssistantUser,
    owner_id: CurrentUserId,
    followers: Followers,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query(max_length=48)] = None,
) -> Response:
    after = last_event_id_header or last_event_id or "0"
    if after != "0" and not ENTRY_ID.match(after):
        raise UnprocessableContent(
            "Last-Event-ID is not an event id from this stream",
            errors=[{"loc": ["header", "Last-Event-ID"], "msg": "invalid", "type": "value"}],
        )
    resources = resources_of(request)
    batches = await runs.follow(
        resources, followers, owner_id=owner_id, run_id=run_id, after=after,
        batch=MAX_BATCH,
    )  # fmt: skip
    return _stream(resources, batches, run_id, "run-sse")


@router.get("/models", summary="Models a run may use, with limits, capabilities and prices "
            "(scope assistant)")  # fmt: skip
async def models(request: Request, _: AssistantUser) -> Page[ModelRead]:
    providers = resources_of(request).get(Providers)
    out = [
        ModelRead(**provider.config.spec(provider.name, model).model_dump(),
                  default=provider.name == providers.default and model == provider.config.model)
        for model, provider in providers.offered()
    ]  # fmt: skip
    return Page(items=out, next_cursor=None)  # all of them: the list is configuration
