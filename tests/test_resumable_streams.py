"""Resumable streams for chat completions and Messages (``x-megabrain-resumable: true``, then
``GET /v1/streams/{answer id}`` with ``Last-Event-ID``): the answer runs whether its client stays or not,
and the rest of it comes from any web process, byte for byte, billed once."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.harness import GatewayHarness, auth, tokens_text, wait_until
from tests.test_responses_background import GPT, Stack, s, stack  # noqa: F401 (fixtures)

RESUMABLE = {"x-megabrain-resumable": "true"}


def sse_events(lines: Any, limit: int | None = None) -> list[tuple[int, str | None, str]]:
    """(id, event name, data) of each event read, up to ``limit`` events."""
    out: list[tuple[int, str | None, str]] = []
    event_id, name = -1, None
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((event_id, name, line[6:]))
            event_id, name = -1, None
            if limit is not None and len(out) == limit:
                break
    return out


def chat_text(events: list[tuple[int, str | None, str]]) -> str:
    text = ""
    for _, _, data in events:
        if data != "[DONE]":
            for choice in json.loads(data).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def resume(web: GatewayHarness, key: str, answer_id: str, last: int) -> list[tuple[int, str | None, str]]:
    with httpx.stream("GET", f"{web.url}/v1/streams/{answer_id}", timeout=20,
                      headers={**auth(key), "last-event-id": str(last)}) as response:
        assert response.status_code == 200, response.read()
        return sse_events(response.iter_lines())


def test_chat_stream_cut_then_resumed_through_another_web_process(s: Stack) -> None:
    s.fake.tokens = 30
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}],
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", s.web.url + "/v1/chat/completions", json=body, timeout=20,
                      headers={**auth(s.keys[0]), **RESUMABLE}) as response:
        assert response.status_code == 200
        answer_id = response.headers["x-megabrain-answer-id"]
        first = sse_events(response.iter_lines(), limit=7)  # the client's connection drops here
    assert [i for i, _, _ in first] == list(range(7))
    rest = resume(s.other_web, s.keys[0], "chatcmpl-" + answer_id, first[-1][0])
    assert rest[0][0] == 7 and rest[-1][2] == "[DONE]"
    assert chat_text(first + rest) == tokens_text(30)  # byte for byte, no gap, no duplicate
    assert len(s.fake.requests) == 1
    generation = httpx.get(s.web.url + "/api/v1/generation", params={"id": answer_id}, headers=auth(s.keys[0]))
    assert generation.status_code == 200  # billed, once


def test_a_resumable_stream_outlives_its_client(s: Stack) -> None:
    """The client leaves before the first token: the answer is not cancelled, and is read whole later."""
    s.fake.hold_answers = True
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", s.web.url + "/v1/chat/completions", json=body, timeout=20,
                      headers={**auth(s.keys[0]), **RESUMABLE}) as response:
        answer_id = response.headers["x-megabrain-answer-id"]
    assert wait_until(lambda: len(s.fake.requests) == 1, 10)
    s.fake.hold_answers = False
    whole = resume(s.web, s.keys[0], answer_id, -1)
    assert chat_text(whole) == tokens_text(s.fake.tokens) and whole[-1][2] == "[DONE]"
    assert s.fake.streams_closed_early == 0


def test_sdks_read_resumable_streams_as_ordinary_ones(s: Stack) -> None:
    """The ``id:`` lines change nothing for the official SDKs (OpenAI chat, Anthropic Messages)."""
    chunks = list(s.client().chat.completions.create(model=GPT, stream=True, extra_headers=RESUMABLE,
                                                     messages=[{"role": "user", "content": "Hello"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == tokens_text(s.fake.tokens)
    claude = anthropic.Anthropic(base_url=s.web.url, api_key=s.keys[0], max_retries=0, timeout=20)
    with claude.messages.stream(model=GPT, max_tokens=200, messages=[{"role": "user", "content": "Hello"}],
                                extra_headers=RESUMABLE) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == tokens_text(s.fake.tokens) and final.stop_reason == "end_turn"


def test_messages_stream_resumed(s: Stack) -> None:
    body = {"model": GPT, "stream": True, "max_tokens": 200, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", s.web.url + "/v1/messages", json=body, timeout=20,
                      headers={**auth(s.keys[0]), **RESUMABLE}) as response:
        first = sse_events(response.iter_lines(), limit=4)
    message_id = json.loads(first[0][2])["message"]["id"]
    rest = resume(s.other_web, s.keys[0], message_id, first[-1][0])
    names = [name for _, name, _ in first + rest]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(json.loads(d)["delta"].get("text", "") for _, n, d in first + rest if n == "content_block_delta")
    assert text == tokens_text(s.fake.tokens)


def test_only_the_owner_resumes(s: Stack) -> None:
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", s.web.url + "/v1/chat/completions", json=body, timeout=20,
                      headers={**auth(s.keys[0]), **RESUMABLE}) as response:
        answer_id = response.headers["x-megabrain-answer-id"]
        response.read()
    for key in (s.keys[1], "mb-not-a-key"):
        got = httpx.get(f"{s.web.url}/v1/streams/chatcmpl-{answer_id}", headers=auth(key), timeout=20)
        assert got.status_code in (401, 404) and got.json()["error"]
    assert httpx.get(f"{s.web.url}/v1/streams/chatcmpl-{answer_id}", headers=auth(s.keys[1]),
                     timeout=20).status_code == 404


@pytest.mark.parametrize("header", [None, "false"])
def test_an_ordinary_stream_is_not_kept(s: Stack, header: str | None) -> None:
    headers = {**auth(s.keys[0]), **({"x-megabrain-resumable": header} if header else {})}
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", s.web.url + "/v1/chat/completions", json=body, timeout=20, headers=headers) as response:
        assert "x-megabrain-answer-id" not in response.headers
        lines = list(response.iter_lines())
    assert not any(line.startswith("id: ") for line in lines)
    answer_id = json.loads(next(line for line in lines if line.startswith("data: {"))[6:])["id"]
    assert httpx.get(f"{s.web.url}/v1/streams/{answer_id}", headers=auth(s.keys[0]), timeout=20).status_code == 404
