"""The wire formats as pure functions: client request → canonical request, canonical events → client bytes."""

from __future__ import annotations

import json

import msgspec

from api.formats.anthropic_messages import ANTHROPIC_MESSAGES, MessagesRequest
from api.formats.anthropic_messages import canonical_request as from_messages
from api.formats.chat_completions import CHAT_COMPLETIONS
from api.formats.openai_responses import OPENAI_RESPONSES, ResponsesRequest
from api.formats.openai_responses import canonical_request as from_responses
from common.errors import GatewayError
from common.wire import Event


def messages(**body: object) -> dict:
    return from_messages(msgspec.convert({"model": "m", "max_tokens": 10, **body}, MessagesRequest), stream=False)


def responses(**body: object) -> dict:
    return from_responses(msgspec.convert({"model": "m", **body}, ResponsesRequest))


def chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
    data = {"id": "chatcmpl-r1", "model": "p/m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name, data = frame.split("\n", 1)
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


USAGE = b'data: {"id":"chatcmpl-r1","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,' \
        b'"total_tokens":14,"prompt_tokens_details":{"cached_tokens":6}}}\n\ndata: [DONE]\n\n'


def test_messages_blocks_become_canonical_parts_and_messages() -> None:
    body = messages(
        system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVB"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s1"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "bad"}],
                 "is_error": True},
                {"type": "text", "text": "and?"}]},
        ],
        tools=[{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"], top_k=5, metadata={"user_id": "u1"},
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    system, user, assistant, tool, follow_up = body["messages"]
    assert system == {"role": "system",
                      "content": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]}
    assert [p["type"] for p in user["content"]] == ["text", "image_url", "image_url", "file"]
    assert user["content"][1]["image_url"]["url"] == "data:image/png;base64,AAA"
    assert user["content"][3]["file"]["file_data"] == "data:application/pdf;base64,JVB"
    assert assistant["content"] == "calling"
    assert assistant["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert [d["type"] for d in assistant["reasoning_details"]] == ["reasoning.text", "reasoning.encrypted"]
    assert assistant["reasoning_details"][0]["signature"] == "s1"
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: bad"}
    assert follow_up == {"role": "user", "content": [{"type": "text", "text": "and?"}]}
    assert body["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["END"] and body["top_k"] == 5 and body["user"] == "u1"
    assert body["reasoning"] == {"enabled": True, "max_tokens": 2048}


def test_messages_stream_encoding() -> None:
    stream = ANTHROPIC_MESSAGES.stream()
    raw = stream.frames(Event("r", 0, 1, "data", chunk({"reasoning_content": "think"}) + chunk({"content": "Hi"})
                              + chunk({"tool_calls": [{"index": 0, "id": "c1",
                                                       "function": {"name": "f", "arguments": ""}}]})
                              + chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})))
    raw += stream.frames(Event("r", 0, 2, "done", chunk({}, "tool_calls") + USAGE))
    names = [name for name, _ in events(raw)]
    assert names == ["message_start",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    parsed = events(raw)
    assert parsed[1][1]["content_block"]["type"] == "thinking"
    assert parsed[7][1]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    delta = parsed[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["input_tokens"] == 4 and delta["usage"]["cache_read_input_tokens"] == 6


def test_messages_error_shape() -> None:
    envelope = GatewayError("rate_limit_exceeded", "slow down").body()
    body = json.loads(ANTHROPIC_MESSAGES.error_body(429, envelope))
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"},
                    "error_type": "rate_limit_exceeded"}
    name, data = events(ANTHROPIC_MESSAGES.stream().error(503, envelope))[0]
    assert name == "error" and data["error"]["type"] == "overloaded_error"


def test_chat_completions_is_the_identity() -> None:
    event = Event("r", 0, 1, "data", chunk({"content": "x"}))
    assert CHAT_COMPLETIONS.stream().frames(event) is event.data
    assert CHAT_COMPLETIONS.result(event) is event.data


def test_responses_items_become_canonical_messages() -> None:
    body = responses(
        instructions="be nice",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "see"},
                                         {"type": "input_image", "image_url": "https://x/i.png"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}]},
            {"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "ns", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
        ],
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "high", "summary": "auto"}, max_output_tokens=50,
        tools=[{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"},
    )
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool"]
    assert body["messages"][2]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x/i.png"}}
    assistant = body["messages"][3]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["ns__spawn", "f"]
    assert assistant["reasoning_details"][0] == {"type": "reasoning.summary", "summary": "plan",
                                                 "format": "openai-responses-v1"}
    assert body["messages"][5]["content"] == "ok"
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    assert body["reasoning"] == {"effort": "high"} and body["max_tokens"] == 50
    assert [t["function"]["name"] for t in body["tools"]] == ["f"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_responses_stream_encoding() -> None:
    stream = OPENAI_RESPONSES.stream()
    raw = stream.frames(Event("r", 0, 1, "data", chunk({"content": "He"}) + chunk({"content": "llo"})))
    raw += stream.frames(Event("r", 0, 2, "data", chunk(
        {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "ns__spawn", "arguments": "{}"}}]})))
    raw += stream.frames(Event("r", 0, 3, "done", chunk({}, "tool_calls") + USAGE))
    parsed = events(raw)
    assert [d["sequence_number"] for _, d in parsed] == list(range(len(parsed)))  # from 0, as OpenAI counts
    assert [name for name, _ in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    final = parsed[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["name"] == "spawn" and final["output"][1]["namespace"] == "ns"
    assert final["usage"]["input_tokens"] == 10 and final["usage"]["input_tokens_details"]["cached_tokens"] == 6
    failed = events(OPENAI_RESPONSES.stream().error(503, GatewayError("temporarily_unavailable", "down").body()))
    assert [n for n, _ in failed] == ["response.created", "response.in_progress", "response.failed"]
    assert failed[-1][1]["response"]["error"] == {"code": "temporarily_unavailable", "message": "down"}


def test_wrong_shapes_are_the_clients_400() -> None:
    import pytest

    for decode in (lambda: messages(messages=[{"role": "user", "content": [{"type": "image", "source": "x"}]}]),
                   lambda: responses(input=[{"type": "message", "role": "user", "content": 5}]),
                   lambda: responses(input="x", text={"format": "x"})):
        with pytest.raises(GatewayError) as refused:
            decode()
        assert refused.value.status == 400 and "wrong shape" in refused.value.message
