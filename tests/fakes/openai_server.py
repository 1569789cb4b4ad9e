"""A local OpenAI-compatible server for tests and benchmarks: real HTTP for the real SDK.

By default it answers every chat completion with `DEFAULT_REPLY`, streamed word by word.
Tests queue scripted behaviours with `FakeOpenAI.script(...)`, one per request, in order:

    Script(text="Hi there")                     a reply
    Script(tool_calls=[("list_todos", {})])     a tool call
    Script(status=429, retry_after=1)           an error status (with Retry-After)
    Script(stall_before_s=5)                    headers, then nothing for a while
    Script(text="a b c d", stall_after=2)       two tokens, then silence
    Script(text="a b c d", cut_after=2)         two tokens, then the connection drops
    Script(malformed=True)                      a chunk that is not JSON
    Script(text="Hi", reasoning="Let me think") reasoning_content deltas, then the answer
                                                (DeepSeek-R1, Qwen3 thinking, Doubao thinking)
    Script(dialect="dashscope", status=429, code="Throttling.RateQuota")
                                                an error body as that provider shapes it
    Script(cached_tokens=12)                    usage reports 12 prompt tokens from cache
    Script(mid_error="InternalError.Algo")      tokens, then an error event in the stream

Dialects (`DIALECTS`) follow the providers' published formats: `openai` (and vLLM),
`dashscope` (Qwen, compatible mode), `ark` (Volcano Ark / Doubao) and `deepseek`. They
differ in their error bodies (DashScope adds `request_id`, Ark's `type` is a category) and
in how usage reports cached prompt tokens (DeepSeek: `prompt_cache_hit_tokens`; the others:
`prompt_tokens_details.cached_tokens`); reasoning tokens are
`completion_tokens_details.reasoning_tokens` in all four.

Every request is recorded (`requests`) so tests can check what the provider was sent, and
the fake's own time to first token for each streamed reply (`first_token_s`, keyed by the
last user message; `GET /_fake/first-token` returns and clears them) so a benchmark can
subtract the provider's own share from the time a client measured through Steward.
`POST /v1/embeddings` answers 16-dimension vectors derived from each input's bytes (the
same text, the same vector); `embedding_status` makes it fail with that status instead,
`embedding_delay_s` makes each request take that long, and `embedding_inputs` counts the
texts it was sent.
Run standalone for benchmarks: `python -m tests.fakes.openai_server --port 8900 --delay 0.01`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = "Hello from the fake provider."
MODEL = "fake-model"


@dataclass
class Script:
    text: str | None = None
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    status: int | None = None
    retry_after: float | None = None
    stall_before_s: float = 0.0
    stall_after: int | None = None
    cut_after: int | None = None
    malformed: bool = False
    delay_s: float | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) to report instead of counting
    reasoning: str | None = None  # streamed word by word as `reasoning_content` first
    dialect: str = "openai"
    code: str | None = None  # the error body's code (with `status` or `mid_error`)
    cached_tokens: int = 0
    mid_error: str | None = None  # after the text, an error event with this code
    report_usage: bool = True  # False: no usage chunk even when asked for (as some servers)


class _Cut(Exception):
    """Raised inside the body: the server drops the connection mid-response."""


class FakeOpenAI:
    def __init__(self, *, delay_s: float = 0.0, reply: str = DEFAULT_REPLY) -> None:
        self.delay_s = delay_s
        self.reply = reply
        self.scripts: deque[Script] = deque()
        self.requests: list[dict[str, Any]] = []
        self.first_token_s: dict[str, float] = {}
        self.embedding_status: int | None = None
        self.embedding_delay_s = 0.0
        self.embedding_inputs = 0
        self.app = Starlette(
            routes=[
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/_fake/first-token", self._first_tokens, methods=["GET"]),
            ]
        )

    def script(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()
        self.first_token_s.clear()
        self.embedding_status, self.embedding_delay_s, self.embedding_inputs = None, 0.0, 0

    async def _first_tokens(self, request: Request) -> Response:
        timings, self.first_token_s = self.first_token_s, {}
        return JSONResponse(timings)

    async def _embeddings(self, request: Request) -> Response:
        import base64
        import hashlib
        import struct

        body = orjson.loads(await request.body())
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.embedding_inputs += len(texts)
        if self.embedding_delay_s:
            await asyncio.sleep(self.embedding_delay_s)
        if self.embedding_status is not None:
            error = {"message": "embedding refused by the fake", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=self.embedding_status)
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(str(text).encode()).digest()
            vector = [(byte - 128) / 128 for byte in digest[:16]]
            if body.get("encoding_format") == "base64":
                packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": packed})
            else:
                data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", MODEL),
                             "usage": usage})  # fmt: skip

    async def _models(self, request: Request) -> Response:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "fake"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _completions(self, request: Request) -> Response:
        arrived = time.perf_counter()
        body = orjson.loads(await request.body())
        if len(self.requests) >= 10_000:  # a long benchmark must not grow the fake forever
            self.requests.clear()
        self.requests.append(body)
        asked = next((str(m.get("content")) for m in reversed(body["messages"])
                      if m.get("role") == "user"), "")  # fmt: skip
        script = self.scripts.popleft() if self.scripts else Script()
        if script.status is not None:
            headers = {}
            if script.retry_after is not None:
                headers["retry-after"] = f"{script.retry_after:g}"
            error = error_body(script.dialect, script.status, script.code)
            return JSONResponse(error, status_code=script.status, headers=headers)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        words = (script.text if script.text is not None else self.reply).split(" ")
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if script.tool_calls:
            tokens = []
        reasoning_tokens = len((script.reasoning or "").split())
        completion_tokens = len(tokens) + 5 * len(script.tool_calls) + reasoning_tokens
        if script.usage is not None:
            prompt_tokens, completion_tokens = script.usage
        usage = usage_body(script.dialect, prompt_tokens, completion_tokens,
                           cached=script.cached_tokens, reasoning=reasoning_tokens)  # fmt: skip
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens) or None}
            if script.reasoning:
                message["reasoning_content"] = script.reasoning
            if script.tool_calls:
                message["tool_calls"] = [
                    {"id": f"call_{i}", "type": "function",
                     "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
                    for i, (name, args) in enumerate(script.tool_calls)
                ]  # fmt: skip
            return JSONResponse({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if script.tool_calls else "stop"}],
                "usage": usage,
            })  # fmt: skip
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage = include_usage and script.report_usage
        delay = self.delay_s if script.delay_s is None else script.delay_s

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }  # fmt: skip
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        async def stream() -> AsyncIterator[bytes]:
            if script.stall_before_s:
                await asyncio.sleep(script.stall_before_s)
            if script.malformed:
                yield b"data: {this is not json\n\n"
                return
            yield chunk({"role": "assistant", "content": ""})
            for position, word in enumerate((script.reasoning or "").split()):
                if delay:
                    await asyncio.sleep(delay)
                # As the thinking models send it: content null beside reasoning_content.
                piece = word if position == 0 else " " + word
                yield chunk({"content": None, "reasoning_content": piece})
            for position, token in enumerate(tokens):
                if script.cut_after is not None and position == script.cut_after:
                    raise _Cut
                if script.stall_after is not None and position == script.stall_after:
                    await asyncio.sleep(3600)
                if delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": token})
                if position == 0 and len(self.first_token_s) < 100_000:
                    # Resumed once the chunk is written to the connection.
                    self.first_token_s[asked] = time.perf_counter() - arrived
            for index, (name, args) in enumerate(script.tool_calls):
                arguments = orjson.dumps(args).decode()
                half = len(arguments) // 2
                head = {"name": name, "arguments": arguments[:half]}
                yield chunk({"tool_calls": [{"index": index, "id": f"call_{index}",
                                             "type": "function", "function": head}]})  # fmt: skip
                tail = {"arguments": arguments[half:]}
                yield chunk({"tool_calls": [{"index": index, "function": tail}]})
            if script.mid_error is not None:
                error = error_body(script.dialect, 500, script.mid_error)
                yield b"data: " + orjson.dumps(error) + b"\n\n"
                return
            yield chunk({}, "tool_calls" if script.tool_calls else "stop")
            if include_usage:
                final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": created, "model": body["model"], "choices": [],
                         "usage": usage}  # fmt: skip
                yield b"data: " + orjson.dumps(final) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


DIALECTS = ("openai", "dashscope", "ark", "deepseek")


def error_body(dialect: str, status: int, code: str | None) -> dict[str, Any]:
    """An error response's body as `dialect`'s provider sends it."""
    message = f"scripted {status}"
    if dialect == "dashscope":
        # {"error": {"code", "param", "message", "type"}, "id", "request_id"}; type = code
        return {"error": {"code": code, "param": None, "message": message, "type": code},
                "id": "chatcmpl-fake", "request_id": "fake-request-id"}  # fmt: skip
    if dialect == "ark":
        # type is a category (TooManyRequests, BadRequest, ...), param a string
        kind = {429: "TooManyRequests", 400: "BadRequest", 403: "Forbidden"}.get(
            status, "InternalServiceError"
        )
        return {"error": {"code": code, "message": message, "param": "", "type": kind}}
    return {"error": {"message": message, "type": "invalid_request_error" if status < 500
                      else "server_error", "param": None, "code": code}}  # fmt: skip


def usage_body(
    dialect: str, prompt: int, completion: int, *, cached: int, reasoning: int
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }  # fmt: skip
    if dialect == "deepseek":
        usage |= {"prompt_cache_hit_tokens": cached, "prompt_cache_miss_tokens": prompt - cached}
    else:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--tokens", type=int, default=5, help="words in the default reply")
    args = parser.parse_args()
    reply = " ".join(f"word{i}" for i in range(args.tokens))
    fake = FakeOpenAI(delay_s=args.delay, reply=reply)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
