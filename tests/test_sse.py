"""The SSE decoder of upstream streams (workers/sse.py): line ends, splits, comments, event names."""

from __future__ import annotations

from workers.sse import SSEDecoder

BODY = (": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\":\r\ndata:  1}\r\n\r\n"
        "id: 7\ndata: two\u2028lines?\n\nevent: ping\n\ndata: [DONE]\rdata: more\r\rdata: last")
EVENTS = [("message_start", "{\"a\":\n 1}"), (None, "two\u2028lines?"), (None, "[DONE]\nmore"), (None, "last")]


def decode(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.close()


def test_sse_line_ends_comments_and_names() -> None:
    body = BODY.encode()
    assert decode([body]) == EVENTS
    assert decode([body[i:i + 1] for i in range(len(body))]) == EVENTS  # every split, a CRLF's and a UTF-8's too
    for cut in range(len(body)):
        assert decode([body[:cut], b"", body[cut:]]) == EVENTS, cut


def test_sse_crlf_split_across_chunks_is_one_line_end() -> None:
    assert decode([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [(None, "a"), (None, "b")]
    assert decode([b"data: a\r", b"\r", b"data: b\r", b"\r"]) == [(None, "a"), (None, "b")]
