"""``/v1/responses`` as OpenAI sends it: the stream's events in their documented order (checked by
``tests/responses_grammar.py``), reasoning summary parts around summary deltas, and the Response object
echoing the request's settings. Encoder-level here; through the gateway with the official SDKs in
``test_responses_clients.py``."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from api.formats.openai_responses import OpenAIResponses, ResponsesRequest
from common.errors import GatewayError
from common.wire import Event
from tests import responses_grammar


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-r1", "model": "p/m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


USAGE = (b'data: {"id":"chatcmpl-r1","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,'
         b'"total_tokens":14}}\n\ndata: [DONE]\n\n')


def decode(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name, data = frame.split("\n", 1)
            event = json.loads(data.removeprefix("data: "))
            assert event["type"] == name.removeprefix("event: ")
            out.append(event)
    return out


def run(fmt: OpenAIResponses, *deltas: dict[str, Any], finish: str = "stop") -> list[dict[str, Any]]:
    stream = fmt.stream()
    raw = b"".join(stream.frames(Event("r", 0, n + 1, "data", chunk(d))) for n, d in enumerate(deltas))
    raw += stream.frames(Event("r", 0, len(deltas) + 1, "done", chunk({}, finish) + USAGE))
    return decode(raw)


REQUEST: dict[str, Any] = {
    "model": "openai/gpt-5-mini", "input": "hi", "instructions": "Be brief.",
    "tools": [{"type": "function", "name": "f", "strict": False,
               "parameters": {"type": "object", "properties": {}}},
              {"type": "web_search", "external_web_access": False}],
    "tool_choice": "required", "parallel_tool_calls": False, "max_output_tokens": 300, "temperature": 0.5,
    "top_p": 0.9, "metadata": {"ticket": "42"}, "reasoning": {"effort": "low", "summary": "auto"},
    "text": {"format": {"type": "text"}, "verbosity": "low"}, "prompt_cache_key": "session-1",
    "truncation": "auto", "user": "u-1", "safety_identifier": "s-1",
}
ECHOED = {"instructions": "Be brief.", "tools": REQUEST["tools"], "tool_choice": "required",
          "parallel_tool_calls": False, "max_output_tokens": 300, "temperature": 0.5, "top_p": 0.9,
          "metadata": {"ticket": "42"}, "reasoning": {"effort": "low", "summary": "auto"},
          "text": {"format": {"type": "text"}, "verbosity": "low"}, "prompt_cache_key": "session-1",
          "truncation": "auto", "user": "u-1", "safety_identifier": "s-1"}
# What OpenAI's response says of a request that set nothing (recorded o3 stream, API reference defaults).
DEFAULTS = {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
            "max_output_tokens": None, "temperature": 1.0, "top_p": 1.0, "metadata": {},
            "reasoning": {"effort": None, "summary": None}, "text": {"format": {"type": "text"}},
            "previous_response_id": None, "truncation": "disabled", "user": None, "store": False,
            "background": False, "error": None, "incomplete_details": None}


def for_request(**body: Any) -> OpenAIResponses:
    return OpenAIResponses.for_request(msgspec.convert(body, ResponsesRequest))


THINK = {"reasoning_details": [{"type": "reasoning.text", "text": "Let me ", "index": 0}]}
THINK_MORE = {"reasoning_details": [{"type": "reasoning.text", "text": "think.", "signature": "sig", "index": 0}]}
CALL = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "write", "arguments": '{"pa'}}]}
CALL_MORE = {"tool_calls": [{"index": 0, "function": {"arguments": 'th": "a"}'}}]}


@pytest.mark.parametrize("deltas,finish", [
    ([{"content": "He"}, {"content": "llo"}], "stop"),
    ([THINK, THINK_MORE, {"content": "Hello"}], "stop"),
    ([{"reasoning": "Plan: "}, {"reasoning": "write."}, CALL, CALL_MORE], "tool_calls"),
    ([THINK, {"content": "Writing it."}, CALL, CALL_MORE], "tool_calls"),
    ([{"reasoning_details": [{"type": "reasoning.encrypted", "data": "opaque", "index": 0}]}, {"content": "ok"}],
     "stop"),
    ([{"content": "Hel"}], "length"),
], ids=["text", "reasoning-text", "reasoning-call", "reasoning-text-call", "encrypted-only", "incomplete"])
def test_stream_follows_openais_grammar(deltas: list[dict[str, Any]], finish: str) -> None:
    responses_grammar.check(run(for_request(model="m", input="hi"), *deltas, finish=finish))


def test_reasoning_summary_is_one_part_around_its_deltas() -> None:
    events = run(for_request(model="m", input="hi"), THINK, THINK_MORE, {"content": "Hello"})
    kinds = [e["type"] for e in events]
    start = kinds.index("response.reasoning_summary_part.added")
    assert kinds[start - 1] == "response.output_item.added"
    assert kinds[start + 1:start + 6] == [
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done"]
    done = events[start + 5]["item"]
    assert done["summary"] == [{"type": "summary_text", "text": "Let me think."}] and done["encrypted_content"]


def test_reasoning_without_text_has_no_summary_part() -> None:
    """Encrypted reasoning only (Anthropic's redacted thinking): the item carries it, with an empty summary."""
    events = run(for_request(model="m", input="hi"),
                 {"reasoning_details": [{"type": "reasoning.encrypted", "data": "opaque", "index": 0}]},
                 {"content": "ok"})
    assert not any(e["type"].startswith("response.reasoning_summary") for e in events)
    reasoning = events[-1]["response"]["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [] and reasoning["encrypted_content"]


def test_failure_mid_item_ends_with_response_failed() -> None:
    stream = for_request(model="m", input="hi").stream()
    raw = stream.frames(Event("r", 0, 1, "data", chunk(THINK) + chunk({"content": "He"})))
    raw += stream.error(502, GatewayError("upstream_error", "gone").body())
    events = decode(raw)
    responses_grammar.check(events)
    assert events[-1]["response"]["status"] == "failed"


def test_response_object_echoes_the_request() -> None:
    fmt = for_request(**REQUEST)
    completion = {"id": "chatcmpl-1", "model": "openai/gpt-5-mini", "created": 1,
                  "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    body = json.loads(fmt.result(Event("r", 0, 1, "result", json.dumps(completion).encode())))
    assert {k: body[k] for k in ECHOED} == ECHOED
    events = run(fmt, {"content": "hi"})
    for event in (events[0], events[1], events[-1]):
        assert {k: event["response"][k] for k in ECHOED} == ECHOED


def test_response_object_defaults_are_openais() -> None:
    fmt = for_request(model="m", input="hi")
    events = run(fmt, {"content": "hi"})
    assert {k: events[-1]["response"][k] for k in DEFAULTS} == DEFAULTS
    failed = decode(fmt.stream().error(503, GatewayError("temporarily_unavailable", "down").body()))
    assert {k: failed[-1]["response"][k] for k in DEFAULTS if k != "error"} == \
        {k: v for k, v in DEFAULTS.items() if k != "error"}
