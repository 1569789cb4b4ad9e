"""Lexical terms for the full-text index and queries, the same for Chinese and English.

PostgreSQL's parsers split on spaces, and Chinese has none; its dictionaries for Chinese
(zhparser, pg_jieba) are extensions that neither the embedded engine nor most managed
servers have. So terms are made here and stored with the `simple` configuration: Latin,
digit and other spaced-script words lowercased, and Han, kana and Hangul runs as overlapping
character bigrams (a lone character stays a unigram). Bigrams are the classic dictionary-free
index for CJK (Lucene's CJKBigramFilter); a question's bigrams hit a passage's without any
word segmentation, at the price of some false bigrams across word boundaries, which ranking
by how many terms match (ts_rank_cd) mostly absorbs.
"""

from __future__ import annotations

import re

# Han (incl. extension A and compatibility), Hiragana, Katakana, Hangul syllables.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uac00-\ud7af"
_RUNS = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_CJK_RUN = re.compile(rf"[{_CJK}]")
# Longer than any real word; PostgreSQL refuses lexemes over 2 KiB.
_MAX_WORD = 64
# English words too common to say anything about a passage (matched against everything,
# they would rank long chunks first).
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "that",
        "the",
        "their",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def terms(text: str) -> list[str]:
    """The text's index terms, in order (duplicates kept: they weigh in ranking)."""
    found: list[str] = []
    for run in _RUNS.findall(text):
        if _CJK_RUN.match(run):
            if len(run) == 1:
                found.append(run)
            else:
                found.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif len(run) <= _MAX_WORD and (word := run.lower()) not in _STOP:
            found.append(word)
    return found


def document(text: str) -> str:
    """What `to_tsvector('simple', ...)` indexes for `text`."""
    return " ".join(terms(text))


def query(text: str) -> str | None:
    """A `to_tsquery('simple', ...)` matching any of the question's terms; None if none."""
    unique = dict.fromkeys(terms(text))
    if not unique:
        return None
    # Terms are letters and digits only (the pattern above), so quoting is all it takes.
    return " | ".join(f"'{term}'" for term in unique)
