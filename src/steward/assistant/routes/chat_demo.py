"""`/chat`: the quickest way to see the assistant stream, with no conversation stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from steward.accounts.deps import OptionalPrincipal
from steward.accounts.limits import limit
from steward.assistant.provider_errors import ProviderError
from steward.assistant.providers import ChatRequest, TextDelta
from steward.assistant.resilience import Providers
from steward.platform.deps import resources_of
from steward.platform.errors import Forbidden, Unauthorized
from steward.platform.inputs import Text
from steward.platform.resources import Resources
from steward.platform.streaming import sse_event, sse_response

router = APIRouter(tags=["assistant"])


@router.get(
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
    return sse_response(_tokens(resources, provider, chat_request), transport="chat-sse",
                        lifetime_s=settings.realtime_max_lifetime_s)  # fmt: skip


async def _tokens(
    resources: Resources, provider: Any, request: ChatRequest
) -> AsyncIterator[bytes]:
    try:
        opened = await resources.get(Providers).open(provider, request)
        async for chunk in opened.chunks():
            if isinstance(chunk, TextDelta):
                yield sse_event(None, {"token": chunk.text})
    except ProviderError as exc:
        yield sse_event(None, {"error": str(exc)})
    yield sse_event(None, {"done": True})
