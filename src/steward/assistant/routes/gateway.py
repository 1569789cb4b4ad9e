"""An OpenAI-compatible gateway: `POST /v1/chat/completions`, `POST /v1/embeddings` and
`GET /v1/models`, so any
OpenAI client (the official SDK included) can use Steward's providers with a Steward API key
sent as `Authorization: Bearer`. Calls get Steward's retries, breaker, limits, metrics and
usage accounting; errors use OpenAI's `{"error": {...}}` shape instead of problem+json.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from steward.accounts.authentication import Principal, resolve_principal
from steward.accounts.limits import limit
from steward.assistant import service, tokens
from steward.assistant.gateway_schemas import (
    IGNORED_PARAMETERS,
    CompletionRequest,
    EmbeddingRequest,
)
from steward.assistant.plan import input_budget
from steward.assistant.provider_errors import ProviderError, ProviderUnavailable
from steward.assistant.providers import (
    ChatRequest,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from steward.assistant.resilience import Providers
from steward.assistant.usage import UsageMeter, cost, count_cost
from steward.knowledge.chunking import count_tokens
from steward.knowledge.embedders import EmbeddingError
from steward.knowledge.service import Knowledge
from steward.platform.deps import resources_of
from steward.platform.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    QuotaExceeded,
    StewardError,
    Unauthorized,
)
from steward.platform.openapi import ERROR_SHAPE
from steward.platform.resources import Resources
from steward.platform.streaming import sse_response
from steward.settings_providers import ModelInfo, Prices

log = structlog.get_logger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}  # fmt: skip


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"),
                      "param": param, "code": code}}  # fmt: skip
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


def _code(exc: StewardError) -> str | None:
    if isinstance(exc, QuotaExceeded):
        return "insufficient_quota"
    return {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(
        exc.status
    )


class OpenAIRoute(APIRoute):
    """Errors of these routes in OpenAI's shape, which its SDKs turn into their exceptions
    (and documented so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.openapi_extra = {**(self.openapi_extra or {}), ERROR_SHAPE: "openai"}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
                return openai_error(400, f"invalid request: {first.get('msg', 'bad body')}",
                                    param=param)  # fmt: skip
            except StewardError as exc:
                return openai_error(exc.status, exc.detail, code=_code(exc), headers=exc.headers)
            except StarletteHTTPException as exc:  # a body that cannot be decoded, say
                return openai_error(
                    exc.status_code, str(exc.detail), headers=dict(exc.headers or {})
                )

        return route


router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=OpenAIRoute)


async def gateway_principal(request: Request) -> Principal:
    """A Steward API key (scope assistant) as `Authorization: Bearer`, or as `x-api-key`."""
    resources = resources_of(request)
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header.lower().startswith("bearer ") else None
    secret = secret or request.headers.get("x-api-key")
    if not secret:
        raise Unauthorized("send a Steward API key as `Authorization: Bearer <key>`")
    principal = await resolve_principal(request, None, secret)
    if principal is None or principal.user is None:
        raise Unauthorized("the gateway takes a user's API key")
    if "assistant" not in principal.scopes:
        raise Forbidden("this API key lacks scope 'assistant'")
    await limit(request, resources.policies.assistant, principal)
    return principal


GatewayCaller = Annotated[Principal, Depends(gateway_principal)]


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid Steward API key"},
    403: {"description": "the key lacks scope `assistant`"},
    429: {"description": "rate limit or daily token quota"},
    503: {"description": "a service the gateway needs is unavailable"},
}
_CHAT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "the completion; its chunks over SSE when `stream` is true",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    },
    400: {"description": "invalid request, or more input than the model takes"},
    404: {"description": "no such model"},
    413: {"description": "body over the size limit"},
    502: {"description": "the provider failed"},
}


@router.get("/models", summary="Models the gateway serves (a Steward API key)", responses=_ERRORS)
async def list_models(request: Request, _: GatewayCaller) -> dict[str, Any]:
    resources = resources_of(request)
    embedder = resources.get(Knowledge).embedder
    return {
        "object": "list",
        "data": [*(_model_json(provider.config.spec(provider.name, model))
                   for model, provider in resources.get(Providers).offered()),
                 {"id": embedder.model, "object": "model", "created": 0,
                  "owned_by": embedder.name}],
    }  # fmt: skip


def _model_json(spec: ModelInfo) -> dict[str, Any]:
    """OpenAI's model object, with what the catalogue knows of it beside (as vLLM adds
    `max_model_len`): limits and capabilities, from configuration."""
    return {
        "id": spec.model, "object": "model", "created": 0, "owned_by": spec.provider,
        "context_window": spec.context_window, "max_output_tokens": spec.max_output_tokens,
        "capabilities": {"reasoning": spec.reasoning, "tools": spec.tools, "images": spec.images},
    }  # fmt: skip


@router.post("/embeddings", summary="Embeddings with the knowledge embedder (a Steward API key)",
             response_model=None, responses={**_ERRORS, 400: {"description": "invalid request"},
                        404: {"description": "no such embedding model"},
                        413: {"description": "body over the size limit"},
                        502: {"description": "the embedder failed"}})  # fmt: skip
async def embeddings(
    request: Request, body: EmbeddingRequest, _: GatewayCaller
) -> dict[str, Any] | Response:
    embedder = resources_of(request).get(Knowledge).embedder
    if body.model not in (embedder.model, embedder.name):
        raise NotFound(f"the embedding model {body.model!r} is not served here; "
                       f"use {embedder.model!r}")  # fmt: skip
    texts = [body.input] if isinstance(body.input, str) else body.input
    try:
        vectors = await embedder.embed(texts)
    except EmbeddingError as exc:
        return openai_error(502, f"the embedder failed: {exc}")
    if body.dimensions is not None and body.dimensions != len(vectors[0]):
        raise BadRequest(
            f"this model makes {len(vectors[0])} dimensions", extra={"param": "dimensions"}
        )
    used = sum(count_tokens(text) for text in texts)
    return {
        "object": "list",
        "model": embedder.model,
        "data": [{"object": "embedding", "index": index, "embedding": _encoded(vector,
                  body.encoding_format)} for index, vector in enumerate(vectors)],
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }  # fmt: skip


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    # What the SDK asks for by default: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@router.post("/chat/completions", summary="Chat Completions, streamed or not (a Steward API key)",
             response_model=None, responses=_CHAT_ERRORS)  # fmt: skip
async def chat_completions(
    request: Request, body: CompletionRequest, principal: GatewayCaller
) -> Response:
    resources = resources_of(request)
    settings = resources.settings
    assert principal.user_id is not None
    offered = resources.get(Providers).offered()
    provider = next((p for model, p in offered if model == body.model), None)
    if provider is None:
        raise NotFound(f"the model {body.model!r} does not exist or is not served here")
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    tools = body.tools or []
    try:  # what the provider will be sent must encode: JSON nested past 255 levels does not
        orjson.dumps([messages, tools, body.model_extra])
    except orjson.JSONEncodeError:
        return openai_error(400, "the request nests too deep", code="invalid_request_error")
    needed = tokens.count_messages(messages, body.model) + tokens.count_tools(tools, body.model)
    budget = input_budget(provider, body.model)
    if needed > budget:
        return openai_error(400, f"this request needs about {needed} tokens; {body.model} "
                            f"accepts {budget} of input", code="context_length_exceeded",
                            param="messages")  # fmt: skip
    # In a transaction of its own, closed before the call, which may take minutes (usage is
    # recorded in another when it ends).
    async with resources.transaction() as session:
        await service.check_quota(
            session, settings, user_id=principal.user_id, api_key_id=principal.api_key_id
        )  # fmt: skip
    extra = body.model_extra or {}
    allowed = provider.config.extra_body_allowed
    unknown = sorted(key for key in extra if key not in allowed and key not in IGNORED_PARAMETERS)
    if unknown:
        return openai_error(400, f"unknown parameters {unknown}; {body.model} also takes "
                            f"{sorted(allowed)}", code="unknown_parameter",
                            param=unknown[0])  # fmt: skip
    options = body.model_dump(
        include={"tool_choice", "temperature", "top_p", "stop", "seed", "response_format"},
        exclude_none=True,
    ) | {key: value for key, value in extra.items() if key in allowed}
    chat = ChatRequest(
        model=body.model, messages=messages, tools=tools, options=options,
        max_tokens=body.max_completion_tokens or body.max_tokens
        or provider.config.limits(body.model)[1],
    )  # fmt: skip
    try:
        opened = await resources.get(Providers).open(provider, chat)
    except ProviderError as exc:
        status = 503 if isinstance(exc, ProviderUnavailable) else 502
        return openai_error(status, str(exc), code=exc.kind)
    prices = opened.provider.config.prices_for(opened.model)
    completion = _Completion(resources, principal, body.model, needed, prices,
                             opened.provider.name)  # fmt: skip
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return sse_response(
            completion.stream(opened.chunks(), include_usage=include_usage),
            transport="gateway-sse", lifetime_s=settings.realtime_max_lifetime_s,
        )  # fmt: skip
    try:
        return Response(orjson.dumps(await completion.whole(opened.chunks())),
                        media_type="application/json")  # fmt: skip
    except ProviderError as exc:
        return openai_error(502, str(exc), code=exc.kind)


class _Completion:
    """One gateway answer in the Chat Completions wire format, and its usage bookkeeping."""

    def __init__(
        self,
        resources: Resources,
        principal: Principal,
        model: str,
        prompt: int,
        prices: Prices | None,
        provider: str,
    ) -> None:
        self.resources = resources
        self.prices = prices
        self.provider = provider
        self.principal = principal
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.estimated_prompt = prompt
        self.usage: Usage | None = None
        self.completion_chars = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    async def stream(
        self, chunks: AsyncIterator[Any], *, include_usage: bool
    ) -> AsyncIterator[bytes]:
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    self.completion_chars += len(chunk.text)
                    yield self._chunk({"content": chunk.text})
                elif isinstance(chunk, ReasoningDelta):
                    self.completion_chars += len(chunk.text)
                    yield self._chunk({"reasoning_content": chunk.text})
                elif isinstance(chunk, ToolCallDelta):
                    self.completion_chars += len(chunk.arguments)
                    yield self._chunk({"tool_calls": [_tool_delta(chunk)]})
                elif isinstance(chunk, Finish):
                    yield self._chunk({}, chunk.reason)
                elif isinstance(chunk, Usage):
                    self.usage = chunk
            if include_usage:
                usage = self._final_usage()
                final = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                         "model": self.model, "choices": [],
                         "usage": self._usage_json(usage)}  # fmt: skip
                yield b"data: " + orjson.dumps(final) + b"\n\n"
        except ProviderError as exc:
            error = {"error": {"message": str(exc), "type": "api_error", "param": None,
                               "code": exc.kind}}  # fmt: skip
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        finally:
            await asyncio.shield(self._record())
        yield b"data: [DONE]\n\n"

    async def whole(self, chunks: AsyncIterator[Any]) -> dict[str, Any]:
        text: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish = "stop"
        try:
            async for chunk in chunks:
                if isinstance(chunk, TextDelta):
                    text.append(chunk.text)
                elif isinstance(chunk, ReasoningDelta):
                    reasoning.append(chunk.text)
                elif isinstance(chunk, ToolCallDelta):
                    empty = {"name": "", "arguments": ""}
                    call = calls.setdefault(
                        chunk.index, {"id": "", "type": "function", "function": empty}
                    )
                    call["id"] = chunk.id or call["id"]
                    call["function"]["name"] = chunk.name or call["function"]["name"]
                    call["function"]["arguments"] += chunk.arguments
                elif isinstance(chunk, Finish):
                    finish = chunk.reason
                elif isinstance(chunk, Usage):
                    self.usage = chunk
        finally:
            self.completion_chars = sum(len(t) for t in (*text, *reasoning))
            await asyncio.shield(self._record())
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return {
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": self._usage_json(self._final_usage()),
        }  # fmt: skip

    def _final_usage(self) -> Usage:
        if self.usage is not None:
            return self.usage
        # The provider did not report usage: a conservative estimate is recorded instead.
        completion = max(1, self.completion_chars // 3)
        return Usage(self.estimated_prompt, completion, self.estimated_prompt + completion)

    async def _record(self) -> None:
        assert self.principal.user_id is not None
        try:
            usage = self._final_usage()
            spent = cost(usage, self.prices)
            count_cost(self.provider, spent, self.prices.currency if self.prices else None)
            await self.resources.get(UsageMeter).record(
                user_id=self.principal.user_id, api_key_id=self.principal.api_key_id,
                usage=usage, cost=spent,
            )  # fmt: skip
        except Exception:  # the answer went out; the log must say it was not counted
            log.exception("gateway.usage_not_recorded", user_id=str(self.principal.user_id))

    def _usage_json(self, usage: Usage) -> dict[str, Any]:
        """OpenAI's usage object; with prices configured, `cost` and `currency` beside it."""
        out: dict[str, Any] = {
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        }  # fmt: skip
        spent = cost(usage, self.prices)
        if spent is not None and self.prices is not None:
            out |= {"cost": float(spent), "currency": self.prices.currency}
        return out


def _tool_delta(chunk: ToolCallDelta) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": chunk.index, "function": {"arguments": chunk.arguments}}
    if chunk.id:
        delta["id"] = chunk.id
        delta["type"] = "function"
    if chunk.name:
        delta["function"]["name"] = chunk.name
    return delta
