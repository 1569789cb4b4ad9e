"""Chat providers: OpenAI-compatible endpoints through the official SDK, behind one small
streaming interface whose chunks and errors do not depend on the SDK (the errors, and how
the SDK's become them, are in provider_errors.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2
import openai
import orjson

from steward.assistant.provider_errors import ProviderError, stream_error, translate
from steward.settings_providers import ProviderConfig


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of a thinking model's reasoning (`reasoning_content`), streamed before its
    answer: shown to the user, never part of the answer or of a later call's history."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; `index` says which call, the first piece carries id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call. `cached_tokens` are part of `prompt_tokens` (read from the
    provider's prompt cache), `reasoning_tokens` part of `completion_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str


Chunk = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int | None = None
    # Other Chat Completions parameters, passed through as given (the gateway's callers).
    options: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str
    config: ProviderConfig
    offline: bool

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """The reply as chunks; raises ProviderError (never an SDK exception)."""
        ...

    async def aclose(self) -> None: ...


_DRAIN_S = 0.25  # how long the end of a body is awaited after [DONE]


class OpenAICompatible:
    """Any endpoint that speaks the Chat Completions API. The SDK's own retries are off:
    retrying belongs to `resilience`, which knows whether a token was already streamed."""

    offline = False

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        timeout = openai.Timeout(
            connect=config.connect_timeout_s,
            # A backstop only: the first-token and idle timeouts are enforced around the
            # stream (precise errors: first_token_timeout, stream_stalled), so this one
            # must not fire before them.
            read=max(config.idle_timeout_s, config.first_token_timeout_s) + 5.0,
            write=config.connect_timeout_s,
            pool=config.connect_timeout_s,
        )
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            # Local servers (vLLM, Ollama) take any key; the SDK insists on one.
            api_key=config.resolved_key() or "unused",
            max_retries=0,
            timeout=timeout,
            # The SDK's aiohttp transport (its `aiohttp` extra): through the default one
            # (httpcore and anyio, a cancel scope per read) reading the provider's chunks
            # was over half of the stream-reading samples in py-spy profiles under 100
            # streams, and added TTFT fell with this one (bench/RESULTS.md); errors still
            # arrive as the SDK's own.
            http_client=openai.DefaultAioHttpClient(
                timeout=timeout,
                limits=httpx2.Limits(
                    max_connections=config.max_connections,
                    max_keepalive_connections=config.max_connections,
                    keepalive_expiry=config.keepalive_s,
                ),
            ),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        kwargs: dict[str, Any] = {
            **self.config.extra_body,  # the provider's vendor parameters, then the request's
            **request.options,
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            kwargs["tools"] = request.tools
        if request.max_tokens is not None:
            kwargs[self.config.output_limit_field] = request.max_tokens
        try:
            # The client's own `post` rather than `chat.completions.create`: create() first
            # walks every message and tool schema through the SDK's typed transform (3.3 ms
            # of CPU for 21 messages and 4 tools, measured, on every call). Auth, timeouts
            # and the mapping of error statuses stay the SDK's; the body comes back as the
            # raw response, read by `_EventReader` (see there why not the SDK's reader).
            response = await self._client.post(
                # Bytes are sent as they are (orjson: the SDK's json.dumps cost more).
                "/chat/completions", content=orjson.dumps(kwargs), cast_to=httpx2.Response,
                stream=True,
            )  # fmt: skip
            try:
                reader = _EventReader(self.name)
                body = response.aiter_bytes()
                async for data in body:
                    for chunk in reader.feed(data):
                        yield chunk
                    if reader.error is not None:
                        raise reader.error
                    if reader.done:
                        break
                else:
                    for chunk in reader.feed(b"\n\n"):  # a last event with no blank line
                        yield chunk
                # What follows [DONE] (normally only the body's end) is read so that the
                # connection is reused, but not waited for: a provider that keeps the
                # connection open after its answer must not turn it into a stalled run.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DRAIN_S):
                        async for _ in body:
                            pass
            finally:
                await response.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc, self.name, endpoint=self.config.base_url) from exc

    async def aclose(self) -> None:
        await self._client.close()


class _EventReader:
    """A provider's server-sent events, read straight from the response body.

    Written here rather than using the SDK's reader: that one splits the body line by line
    in Python, and with 1,000 streams open it was 16% of the API process's CPU
    (bench/RESULTS.md, Streams). Here each network read is split into its events at once
    and each event parsed with orjson; the text deltas of one read are merged, so a process
    that falls behind passes on fewer, larger pieces (never less text, never reordered).
    The SSE rules it keeps: CRLF, LF or CR line ends, `data:` lines joined, comments and
    unknown fields ignored, a `[DONE]` data ending the reply, an `error` (event or field)
    failing it."""

    __slots__ = ("_buffer", "_held", "_provider", "done", "error")

    MAX_EVENT = 4 << 20  # bytes of one event: a provider must not grow our memory unbounded

    def __init__(self, provider: str) -> None:
        # What has arrived of events not yet complete, line ends made LF. Each read is
        # appended and searched alone, so an event dribbled in tiny reads costs linear time.
        self._buffer = bytearray()
        self._held = False  # a CR ended the last read: maybe half of a CRLF
        self._provider = provider
        self.done = False
        # An error event: raised by the caller once what came before it is passed on.
        self.error: ProviderError | None = None

    def feed(self, data: bytes) -> list[Chunk]:
        """The chunks of every event that `data` completes."""
        if self._held:
            data, self._held = b"\r" + data, False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, self._held = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        searched = max(0, len(self._buffer) - 1)  # a blank line may span two reads
        self._buffer += data
        end = self._buffer.rfind(b"\n\n", searched)
        if end < 0:
            if len(self._buffer) > self.MAX_EVENT:
                raise ProviderError(f"{self._provider} sent an event over {self.MAX_EVENT} bytes",
                                    provider=self._provider, cause="reply")  # fmt: skip
            return []
        complete = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        out: list[Chunk] = []
        for block in complete.split(b"\n\n"):
            name, payload = _event(block)
            if payload is None:
                continue
            if payload.startswith(b"[DONE]"):
                self.done = True
                break
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise ProviderError(f"{self._provider} sent a reply that could not be read",
                                    provider=self._provider, cause="reply") from None  # fmt: skip
            if not isinstance(message, dict):
                raise ProviderError(f"{self._provider} sent a chunk that is not an object",
                                    provider=self._provider, cause="reply")  # fmt: skip
            if name == b"error" or message.get("error"):
                self.error, self.done = stream_error(self._provider, message), True
                break
            out.extend(_chunks(message))
        return _merged(out) if len(out) > 1 else out


def _event(block: bytes) -> tuple[bytes | None, bytes | None]:
    """(event name, data) of one event's lines; data None when it has no data line."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return None, block[6:]  # what nearly every event of a chat stream looks like
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        key, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if key == b"data":
            data.append(value)
        elif key == b"event":
            name = value
    return name, b"\n".join(data) if data else None


def _merged(chunks: list[Chunk]) -> list[Chunk]:
    out: list[Chunk] = []
    for chunk in chunks:
        last = out[-1] if out else None
        if type(chunk) is TextDelta and type(last) is TextDelta:
            out[-1] = TextDelta(last.text + chunk.text)
        elif type(chunk) is ReasoningDelta and type(last) is ReasoningDelta:
            out[-1] = ReasoningDelta(last.text + chunk.text)
        else:
            out.append(chunk)
    return out


def _chunks(chunk: dict[str, Any]) -> list[Chunk]:
    """One streamed Chat Completions chunk (decoded JSON) as our chunk types. Anything not
    shaped like one raises, which the caller reports as an unreadable reply."""
    out: list[Chunk] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta:
            if reasoning := delta.get("reasoning_content"):
                out.append(ReasoningDelta(reasoning))
            if content := delta.get("content"):
                out.append(TextDelta(content))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                out.append(
                    ToolCallDelta(
                        index=call.get("index") or 0,
                        id=call.get("id"),
                        name=function.get("name"),
                        arguments=function.get("arguments") or "",
                    )
                )
        if reason := choice.get("finish_reason"):
            out.append(Finish(reason))
    if usage := chunk.get("usage"):
        out.append(usage_of(usage))
    return out


_MAX_COUNT = 2**31 - 1  # a run's counters are 32-bit columns


def _count(value: object) -> int:
    """A token count as reported; anything not a whole number counts 0, nothing over 2^31."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return 0
    return min(value, _MAX_COUNT)


def usage_of(usage: dict[str, Any]) -> Usage:
    """A reply's `usage` object in any of the dialects: OpenAI's, DashScope's and Ark's
    `prompt_tokens_details.cached_tokens` / `completion_tokens_details.reasoning_tokens`,
    DeepSeek's `prompt_cache_hit_tokens`. Counts that are not whole numbers count 0."""
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    cached = _count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0
    prompt_tokens = _count(usage.get("prompt_tokens"))
    completion_tokens = _count(usage.get("completion_tokens"))
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=_count(usage.get("total_tokens")) or prompt_tokens + completion_tokens,
        cached_tokens=min(prompt_tokens, cached or _count(usage.get("prompt_cache_hit_tokens"))),
        reasoning_tokens=min(
            completion_tokens,
            _count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
        ),
    )
