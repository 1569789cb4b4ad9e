"""The offline provider: deterministic replies without a network, so `make run` works with no
key. Every reply starts with "[offline]". It streams word by word and can call tools:

- "list my todos" (or "show my todos") calls `list_todos`;
- "add todo: <title>" (or "remind me to <title>") calls `create_todo`;
- "complete todo <id>" calls `complete_todo`;
- a question about "my documents" / "my notes" (or 文档, 资料, 知识库) calls
  `search_knowledge` with the question, then answers with the best passages, cited [n];
- after another tool result it reports that result; anything else is echoed back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from steward.assistant import tokens
from steward.assistant.providers import (
    ChatRequest,
    Chunk,
    Finish,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from steward.settings_providers import ProviderConfig

PREFIX = "[offline]"
# It answers in canned words: a JSON Schema answer is refused up front rather than failed.
CONFIG = ProviderConfig(base_url="offline://", model="offline", context_window=32_768,
                        structured_output="none")  # fmt: skip

_INTENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(list|show)\b.*\btodos?\b", re.I), "list_todos"),
    (re.compile(r"\b(?:add todo|create todo|remind me to)\s*:?\s*(?P<title>.+)", re.I),
     "create_todo"),
    (re.compile(r"\bcomplete todo\s+(?P<id>[0-9a-f-]{36})", re.I), "complete_todo"),
    (re.compile(r"\b(?:my|our|the)\s+(?:documents?|docs|notes|files|knowledge)\b|"
                r"文档|资料|知识库|笔记", re.I), "search_knowledge"),
)  # fmt: skip
_CITED_CHARS = 200


def _intent(text: str, available: set[str]) -> tuple[str, dict[str, Any]] | None:
    for pattern, tool in _INTENTS:
        match = pattern.search(text)
        if match is None or tool not in available:
            continue
        if tool == "create_todo":
            return tool, {"title": match["title"].strip().rstrip(".")[:200]}
        if tool == "complete_todo":
            return tool, {"todo_id": match["id"]}
        if tool == "search_knowledge":
            return tool, {"query": text[:1000], "k": 3}
        return tool, {}
    return None


def _reply(request: ChatRequest) -> str | tuple[str, dict[str, Any]]:
    last = request.messages[-1] if request.messages else {"role": "user", "content": ""}
    if last["role"] == "tool":
        if last.get("name") == "search_knowledge":
            return _answer_from_sources(str(last.get("content") or "{}"))
        return f"{PREFIX} The tool {last.get('name') or 'call'} answered: {last.get('content')}"
    text = str(last.get("content") or "")
    available = {tool["function"]["name"] for tool in request.tools}
    intent = _intent(text, available)
    if intent is not None:
        return intent
    return (
        f"{PREFIX} No language model is configured, so this is the offline assistant. "
        f"You said: {text}"
    )


def _answer_from_sources(content: str) -> str:
    """Quote the best passage and cite it and the others, as a model told to cite would."""
    sources = orjson.loads(content).get("sources") or []
    if not sources:
        return f"{PREFIX} I found nothing about that in your documents."
    best = sources[0]
    quote = " ".join(str(best["text"]).split())[:_CITED_CHARS]
    others = " ".join(f"[{source['index']}]" for source in sources[1:])
    also = f" See also {others}." if others else ""
    return f'{PREFIX} From your documents, {best["title"]}: "{quote}" [{best["index"]}].{also}'


class OfflineProvider:
    name = "offline"
    config = CONFIG
    offline = True

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self._delay_s = delay_s

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        reply = _reply(request)
        prompt = tokens.count_messages(request.messages, request.model)
        if isinstance(reply, tuple):
            name, arguments = reply
            call_id = f"call_offline_{len(request.messages)}"
            encoded = orjson.dumps(arguments).decode()
            yield ToolCallDelta(index=0, id=call_id, name=name, arguments=encoded)
            completion = tokens.count_text(name + encoded, request.model)
            finish = "tool_calls"
        else:
            words = reply.split(" ")
            for position, word in enumerate(words):
                if self._delay_s:
                    await asyncio.sleep(self._delay_s)
                yield TextDelta(word if position == 0 else " " + word)
            completion = tokens.count_text(reply, request.model)
            finish = "stop"
        yield Finish(finish)
        yield Usage(prompt_tokens=prompt, completion_tokens=completion,
                    total_tokens=prompt + completion)  # fmt: skip

    async def aclose(self) -> None:
        return None
