"""How a provider's raw SSE body becomes chunks: the SSE rules the reader keeps, split reads,
merged text, and the errors it raises for what it cannot read."""

from __future__ import annotations

import orjson
import pytest

from steward.assistant.provider_errors import ProviderError
from steward.assistant.providers import (
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    _EventReader,
    usage_of,
)


def _data(delta: dict[str, object], finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk)


def _feed(*reads: bytes) -> tuple[list[list[object]], _EventReader]:
    reader = _EventReader("fake")
    out = []
    for read in reads:
        out.append(list(reader.feed(read)))
        if reader.error is not None:  # as the provider's stream() does
            raise reader.error
    return out, reader


def test_text_of_one_read_is_merged_and_reads_stay_apart() -> None:
    one = _data({"content": "Hel"}) + b"\n\n" + _data({"content": "lo"}) + b"\n\n"
    two = _data({"content": " there"}) + b"\n\n"
    (first, second), _ = _feed(one, two)
    assert first == [TextDelta("Hello")]
    assert second == [TextDelta(" there")]


def test_an_event_split_anywhere_between_reads_is_read_once() -> None:
    body = _data({"content": "a"}) + b"\r\n\r\n" + _data({"content": "b"}) + b"\r\n\r\n"
    for cut in range(1, len(body)):
        reads, _ = _feed(body[:cut], body[cut:])
        texts = [chunk.text for read in reads for chunk in read if isinstance(chunk, TextDelta)]
        assert "".join(texts) == "ab", cut


def test_cr_line_ends_multi_line_data_comments_and_other_fields() -> None:
    payload = orjson.dumps({"choices": [{"delta": {"content": "x"}}]})
    head, tail = payload[:10], payload[10:]
    body = b": keep-alive\r\rid: 7\rretry: 10\rdata: " + head + b"\rdata:" + tail + b"\r\r"
    # A CR ending a read may be half of a CRLF: the event is complete with the next read.
    (first, second), reader = _feed(body, b"data: [DONE]\r\r")
    # Two data lines join with a newline, which JSON reads as whitespace between tokens.
    assert (first, second) == ([], [TextDelta("x")])
    assert not reader.done  # its own last CR is held the same way
    assert reader.feed(b"\n") == []  # the CRLF completed: [DONE]
    assert reader.done


def test_done_ends_the_reply_and_what_follows_is_not_read() -> None:
    body = _data({"content": "a"}) + b"\n\ndata: [DONE]\n\n" + _data({"content": "b"}) + b"\n\n"
    (chunks,), reader = _feed(body)
    assert chunks == [TextDelta("a")]
    assert reader.done


def test_tool_calls_usage_and_finish_keep_their_order() -> None:
    call = {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                      "total_tokens": 5}}  # fmt: skip
    events = [_data({"content": "a"}), _data(call), _data({"content": "b"}),
              _data({}, "tool_calls"), b"data: " + orjson.dumps(usage), b""]  # fmt: skip
    body = b"\n\n".join(events)
    (chunks,), _ = _feed(body)
    assert chunks == [TextDelta("a"), ToolCallDelta(index=0, id="c1", name="f", arguments="{"),
                      TextDelta("b"), Finish("tool_calls"), Usage(3, 2, 5)]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"data: {not json\n\n", "could not be read"),
        (b"data: [1, 2]\n\n", "not an object"),
        (b'data: {"error": {"message": "quota exceeded", "code": "Throttling"}}\n\n',
         r"mid-reply \(Throttling\): quota exceeded"),
        (b'event: error\ndata: {"message": "overloaded"}\n\n', "mid-reply"),
    ],
)  # fmt: skip
def test_unreadable_or_error_events_fail_the_reply(body: bytes, words: str) -> None:
    with pytest.raises(ProviderError, match=words) as caught:
        _feed(body)
    assert caught.value.cause == "reply"


def test_what_came_before_an_error_event_is_kept() -> None:
    reader = _EventReader("fake")
    error = b'data: {"error": {"message": "cut", "code": "InternalError.Algo"}}\n\n'
    chunks = reader.feed(_data({"content": "partial"}) + b"\n\n" + error)
    assert chunks == [TextDelta("partial")]
    assert reader.error is not None and reader.error.code == "InternalError.Algo"
    assert reader.done


def test_an_endless_event_is_refused_before_it_fills_memory() -> None:
    reader = _EventReader("fake")
    reader.feed(b"data: " + b"x" * (_EventReader.MAX_EVENT - 100))
    with pytest.raises(ProviderError, match="over"):
        reader.feed(b"x" * 200)


def test_a_body_read_one_byte_at_a_time_gives_the_same_text() -> None:
    body = b"".join(_data({"content": f"w{i} "}) + b"\r\n\r\n" for i in range(50))
    reader = _EventReader("fake")
    pieces = [chunk for byte in range(len(body)) for chunk in reader.feed(body[byte : byte + 1])]
    assert "".join(c.text for c in pieces if isinstance(c, TextDelta)) == "".join(
        f"w{i} " for i in range(50)
    )
    assert len(pieces) == 50  # nothing merged: no read held two events


def test_reasoning_of_one_read_is_merged_apart_from_the_answer() -> None:
    body = b"".join(
        _data(delta) + b"\n\n"
        for delta in ({"content": None, "reasoning_content": "Think"},
                      {"content": None, "reasoning_content": "ing."},
                      {"content": "Done"}, {"content": "."})
    )  # fmt: skip
    (chunks,), _ = _feed(body)
    assert chunks == [ReasoningDelta("Thinking."), TextDelta("Done.")]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
          "prompt_tokens_details": {"cached_tokens": 4},
          "completion_tokens_details": {"reasoning_tokens": 3}}, Usage(10, 5, 15, 4, 3)),
        ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 6,
          "prompt_cache_miss_tokens": 4}, Usage(10, 5, 15, 6, 0)),  # DeepSeek; total added
        ({"prompt_tokens": -3, "completion_tokens": "5", "total_tokens": True,
          "prompt_tokens_details": None, "completion_tokens_details": [1]}, Usage(0, 0, 0)),
        ({"prompt_tokens": 10**30, "completion_tokens": 1, "total_tokens": 10**30,
          "prompt_tokens_details": {"cached_tokens": 10**30}},
         Usage(2**31 - 1, 1, 2**31 - 1, 2**31 - 1, 0)),
        ({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
          "prompt_tokens_details": {"cached_tokens": 50},
          "completion_tokens_details": {"reasoning_tokens": 9}}, Usage(5, 2, 7, 5, 2)),
    ],
)  # fmt: skip
def test_usage_in_every_dialect_is_read_within_bounds(usage: dict[str, object],
                                                      expected: Usage) -> None:  # fmt: skip
    assert usage_of(usage) == expected
