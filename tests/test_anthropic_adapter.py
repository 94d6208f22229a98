"""The Anthropic adapter: request translation, and responses/streams/errors from a strict fake Messages API."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import httpx
import msgspec
import pytest

from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.server import ThreadedServer
from tests.harness import reassemble, sse_events
from workers.providers.anthropic import AnthropicAdapter
from workers.providers.anthropic_request import messages_payload, sanitize_tool_id
from workers.providers.base import Upstream, UpstreamError

ADAPTER = AnthropicAdapter()
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def upstream(base_url: str = "https://api.anthropic.com", **kw: Any) -> Upstream:
    return Upstream(provider="anthropic", kind="anthropic", base_url=base_url, api_key="sk-ant-test",
                    auth="x-api-key", **kw)


def payload(body: dict[str, Any], stream: bool = False, **kw: Any) -> dict[str, Any]:
    return messages_payload(upstream(**kw), "claude-test", body, stream)


# ---------------------------------------------------------------- request translation


def test_request_line_headers_and_body() -> None:
    spec = ADAPTER.chat_request(upstream(), "claude-test", {"messages": [{"role": "user", "content": "hi"}]}, True)
    assert (spec.method, spec.url) == ("POST", "https://api.anthropic.com/v1/messages")
    assert spec.headers["x-api-key"] == "sk-ant-test"
    assert spec.headers["anthropic-version"] == "2023-06-01"
    assert spec.headers["content-type"] == "application/json"
    body = json.loads(spec.content)
    assert body == {"model": "claude-test", "max_tokens": 4096, "stream": True,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_base_url_with_v1_and_version_override() -> None:
    spec = ADAPTER.chat_request(upstream("http://proxy.local/v1/", api_version="2024-01-01"), "m",
                                {"messages": [{"role": "user", "content": "hi"}]}, False)
    assert spec.url == "http://proxy.local/v1/messages"
    assert spec.headers["anthropic-version"] == "2024-01-01"
    assert "stream" not in json.loads(spec.content)


def test_bearer_auth_of_a_configured_provider_still_uses_x_api_key() -> None:
    up = dataclasses.replace(upstream(), auth="bearer")
    spec = ADAPTER.chat_request(up, "m", {"messages": [{"role": "user", "content": "hi"}]}, False)
    assert spec.headers["x-api-key"] == "sk-ant-test" and "authorization" not in spec.headers


def test_max_tokens_client_value_or_upstream_default() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert payload({"messages": msgs, "max_completion_tokens": 77, "max_tokens": 5})["max_tokens"] == 77
    assert payload({"messages": msgs, "max_tokens": 5})["max_tokens"] == 5
    assert payload({"messages": msgs}, default_max_tokens=32000)["max_tokens"] == 32000


def test_system_and_developer_messages_become_top_level_system() -> None:
    out = payload({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather?"}]})
    assert out["system"] == "Be terse.\n\nUse metric units."
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_images_data_url_and_http_url() -> None:
    out = payload({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}}]}]})
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


def test_unsupported_part_is_a_clear_invalid_request() -> None:
    with pytest.raises(UpstreamError) as info:
        payload({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})
    assert info.value.error_type == "invalid_request" and not info.value.retryable
    assert "input_audio" in info.value.message


def test_tools_translate_to_input_schema() -> None:
    out = payload({"messages": [{"role": "user", "content": "hi"}],
                   "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}]})
    assert out["tools"] == [
        {"name": "get_weather", "description": "Current weather",
         "input_schema": WEATHER_TOOL["function"]["parameters"]},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in out


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
])
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert payload(body)["tool_choice"] == expected


def tool_conversation(ids: tuple[str, str] = ("call_1", "call_2")) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": ids[0], "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": ids[1], "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": ids[0], "content": "18C"},
        {"role": "tool", "tool_call_id": ids[1], "content": [{"type": "text", "text": "21C"}]},
        {"role": "user", "content": "Which is warmer?"},
    ]


def test_tool_calls_and_results_merge_into_alternating_turns() -> None:
    out = payload({"messages": tool_conversation(), "tools": [WEATHER_TOOL]})
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assistant, results = out["messages"][1]["content"], out["messages"][2]["content"]
    assert assistant == [  # the empty "" text is dropped; arguments become objects
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"arguments": "not json"}}]
    assert results == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        {"type": "text", "text": "Which is warmer?"}]


def test_tool_results_come_first_in_a_merged_user_turn(state: AnthropicFakeState, base_url: str) -> None:
    messages = tool_conversation()[:2] + [{"role": "user", "content": "(an image arrived)"}] + tool_conversation()[2:4]
    out = payload({"messages": messages, "tools": [WEATHER_TOOL]})
    assert [b["type"] for b in out["messages"][2]["content"]] == ["tool_result", "tool_result", "text"]
    spec = ADAPTER.chat_request(upstream(base_url), "claude-test", {"messages": messages, "tools": [WEATHER_TOOL]},
                                False)
    assert send(spec).status_code == 200


def test_foreign_tool_ids_are_sanitized_deterministically_and_distinctly() -> None:
    out = payload({"messages": tool_conversation(("fc.1|a", "fc:1|a")), "tools": [WEATHER_TOOL]})
    uses = [b["id"] for b in out["messages"][1]["content"]]
    results = [b["tool_use_id"] for b in out["messages"][2]["content"] if b["type"] == "tool_result"]
    assert uses == results
    assert uses[0] != uses[1]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in uses)
    assert sanitize_tool_id("fc.1|a") == uses[0]
    assert sanitize_tool_id("toolu_01AbC-x") == "toolu_01AbC-x"
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", sanitize_tool_id(""))


def test_empty_text_blocks_and_empty_turns_are_dropped() -> None:
    out = payload({"messages": [
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"}]})
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}]


def test_stop_sampling_user_and_stream() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    out = payload({"messages": msgs, "stop": "END", "temperature": 1.7, "top_p": 0.9, "user": "u-42"}, stream=True)
    assert out["stop_sequences"] == ["END"]
    assert out["temperature"] == 1.0  # OpenAI's 0–2 range clipped to Anthropic's 0–1
    assert out["top_p"] == 0.9
    assert out["metadata"] == {"user_id": "u-42"}
    assert out["stream"] is True
    assert payload({"messages": msgs, "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


# ---------------------------------------------------------------- against the fake server


@pytest.fixture(scope="module")
def fake() -> Any:
    state = AnthropicFakeState()
    with ThreadedServer(create_anthropic_app(state)) as server:
        yield state, server


@pytest.fixture
def state(fake: Any) -> AnthropicFakeState:
    state, _ = fake
    for f in dataclasses.fields(AnthropicFakeState):  # fresh defaults, same object the app holds
        setattr(state, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    return state


@pytest.fixture
def base_url(fake: Any) -> str:
    return fake[1].url


def send(spec: Any) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.request(spec.method, spec.url, headers=spec.headers, content=spec.content)


def run_stream(base_url: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """Send a streaming request, feed every event to a translator; returns (chunks, translator)."""
    response = send(ADAPTER.chat_request(upstream(base_url), "claude-test", body, True))
    assert response.status_code == 200, response.text
    translator = ADAPTER.stream_translator()
    chunks: list[dict[str, Any]] = []
    for name, data in sse_events(response.text):
        chunks += translator.feed(name, data)
    return chunks, translator


def test_full_tool_conversation_is_accepted_and_answered(state: AnthropicFakeState, base_url: str) -> None:
    state.tool_call = {"id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}
    body = {"messages": [{"role": "system", "content": "Be terse."}, *tool_conversation(("fc.1", "fc:1"))],
            "tools": [WEATHER_TOOL], "max_tokens": 50}
    response = send(ADAPTER.chat_request(upstream(base_url), "claude-test", body, False))
    assert response.status_code == 200, response.text  # the strict fake validated roles, ids, pairing
    out = ADAPTER.chat_response(response.json())
    message = out["choices"][0]["message"]
    assert message["content"] == state.reply
    assert message["tool_calls"] == [{"id": "toolu_9", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["prompt_tokens"] == 12
    assert out["usage"]["total_tokens"] == 12 + out["usage"]["completion_tokens"]
    assert state.requests[-1]["body"]["system"] == "Be terse."


def test_stream_text_is_reassembled_with_finish_and_usage(state: AnthropicFakeState, base_url: str) -> None:
    state.reply = "The quick brown fox jumps over the lazy dog."
    chunks, translator = run_stream(base_url, {"messages": [{"role": "user", "content": "hi"}]})
    assert translator.close() == []
    result = reassemble(chunks)
    assert result["text"] == state.reply
    assert result["finish"] == "stop" and result["calls"] == []
    assert result["usage"]["prompt_tokens"] == 12 and result["usage"]["completion_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_stream_parallel_tool_calls_keyed_by_index(state: AnthropicFakeState, base_url: str) -> None:
    state.tool_call = [{"id": "toolu_a", "name": "get_weather", "input": {"city": "Paris", "unit": "C"}},
                       {"id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}]
    chunks, translator = run_stream(base_url, {"messages": [{"role": "user", "content": "hi"}],
                                               "tools": [WEATHER_TOOL]})
    translator.close()
    result = reassemble(chunks)
    assert result["text"] == state.reply  # block 0 is text, so tool indices are not Anthropic's block indices
    assert result["calls"] == [  # by index
        {"id": "toolu_a", "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "C"})},
        {"id": "toolu_b", "name": "get_weather", "arguments": json.dumps({"city": "Rome"})}]
    assert result["finish"] == "tool_calls"
    starts = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
              if "id" in (c["choices"][0]["delta"].get("tool_calls") or [{}])[0]]
    assert [s["function"]["arguments"] for s in starts] == ["", ""]


def test_midstream_error_event_raises_retryable(state: AnthropicFakeState, base_url: str) -> None:
    state.failures = ["midstream_error"]
    with pytest.raises(UpstreamError) as info:
        run_stream(base_url, {"messages": [{"role": "user", "content": "hi"}]})
    assert info.value.retryable and info.value.status == 529


def test_stream_cut_before_message_stop_raises_on_close(state: AnthropicFakeState, base_url: str) -> None:
    state.failures = ["cut"]
    chunks, translator = run_stream(base_url, {"messages": [{"role": "user", "content": "hi"}]})
    assert reassemble(chunks)["text"]  # some text arrived, and the body ended cleanly
    with pytest.raises(UpstreamError) as info:
        translator.close()
    assert info.value.retryable


def test_scripted_reset_breaks_the_body(state: AnthropicFakeState, base_url: str) -> None:
    state.failures = ["reset"]
    with pytest.raises(httpx.TransportError):
        send(ADAPTER.chat_request(upstream(base_url), "claude-test", {"messages": [{"role": "user", "content": "hi"}]},
                                  False))


# ---------------------------------------------------------------- errors


def error_of(response: httpx.Response) -> UpstreamError:
    return ADAPTER.error(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def test_overloaded_529_is_retryable_with_retry_after(state: AnthropicFakeState, base_url: str) -> None:
    state.failures = [529]
    response = send(ADAPTER.chat_request(upstream(base_url), "m", {"messages": [{"role": "user", "content": "x"}]},
                                         False))
    err = error_of(response)
    assert (err.status, err.retryable, err.fallback, err.code) == (529, True, True, "overloaded_error")
    assert err.retry_after == 1.0


def test_500_is_retryable_and_429_honours_retry_after(state: AnthropicFakeState, base_url: str) -> None:
    state.failures = [500, 429]
    state.retry_after = "7"
    spec = ADAPTER.chat_request(upstream(base_url), "m", {"messages": [{"role": "user", "content": "x"}]}, False)
    first, second = error_of(send(spec)), error_of(send(spec))
    assert (first.status, first.retryable, first.error_type) == (500, True, "upstream_error")
    assert (second.status, second.retryable, second.error_type) == (429, True, "rate_limit_exceeded")
    assert second.retry_after == 7.0


def test_400_passes_the_upstream_message_and_is_final(state: AnthropicFakeState, base_url: str) -> None:
    raw = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}
    spec = ADAPTER.chat_request(upstream(base_url), "m", {"messages": [{"role": "user", "content": "x"}]}, False)
    response = send(dataclasses.replace(spec, content=msgspec.json.encode(raw)))
    err = error_of(response)
    assert (err.status, err.retryable, err.fallback, err.error_type) == (400, False, False, "invalid_request")
    assert "text content blocks must be non-empty" in err.message
    assert err.client_status == 400


def test_missing_key_is_an_upstream_problem_not_the_clients(state: AnthropicFakeState, base_url: str) -> None:
    up = dataclasses.replace(upstream(base_url), api_key=None)
    err = error_of(send(ADAPTER.chat_request(up, "m", {"messages": [{"role": "user", "content": "x"}]}, False)))
    assert (err.status, err.retryable, err.fallback, err.error_type) == (401, False, True, "upstream_error")


def test_billing_and_context_overflow_classification() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low"}}'
    err = ADAPTER.error(400, {}, body)
    assert (err.retryable, err.fallback, err.error_type) == (False, True, "upstream_error")
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 9 > 5"}}'
    err = ADAPTER.error(400, {}, body)
    assert (err.error_type, err.code, err.retryable) == ("invalid_request", "context_length_exceeded", False)
    err = ADAPTER.error(502, {}, b"<html>bad gateway</html>")
    assert err.retryable and "bad gateway" in err.message


def test_inband_api_error_is_retryable_500() -> None:
    translator = ADAPTER.stream_translator()
    with pytest.raises(UpstreamError) as info:
        translator.feed("error", '{"type":"error","error":{"type":"api_error","message":"Internal"}}')
    assert (info.value.status, info.value.retryable) == (500, True)


# ---------------------------------------------------------------- reasoning, caching, structured output


def test_streamed_reasoning_pieces_sent_back_are_joined_into_one_signed_block() -> None:
    pieces = [{"type": "reasoning.text", "text": "Let me ", "index": 0, "format": "anthropic-claude-v1"},
              {"type": "reasoning.text", "text": "think.", "index": 0, "format": "anthropic-claude-v1"},
              {"type": "reasoning.text", "text": "", "signature": "sig_1", "index": 0, "format": "anthropic-claude-v1"},
              {"type": "reasoning.encrypted", "data": "opaque", "index": 1, "format": "anthropic-claude-v1"},
              {"type": "reasoning.text", "text": "a Gemini thought", "index": 2, "format": "google-gemini-v1"},
              {"type": "reasoning.text", "text": "unsigned", "index": 3}]
    out = payload({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Checking.", "reasoning_details": pieces,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]})
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig_1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]


def test_cache_control_survives_on_documents_and_reasoning_can_be_disabled() -> None:
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="},
           "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    out = payload({"messages": [{"role": "user", "content": [pdf]}], "reasoning_effort": "high",
                   "reasoning": {"enabled": False}})
    assert out["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert "thinking" not in out


def test_thinking_budget_stays_below_max_tokens_and_drops_refused_sampling() -> None:
    out = payload({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "top_k": 5, "top_p": 0.5,
                   "reasoning": {"effort": "minimal"}})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert out["max_tokens"] > 1024 and "top_k" not in out and "top_p" not in out


def test_json_object_goes_through_the_forced_tool_and_comes_back_as_content() -> None:
    body = {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"}}
    out = payload(body)
    assert out["tool_choice"] == {"type": "tool", "name": "json_response"}
    answer = ADAPTER.chat_response({"content": [{"type": "tool_use", "id": "t", "name": "json_response",
                                                 "input": {"a": 1}}], "stop_reason": "tool_use"}, body)
    assert answer["choices"][0]["message"]["content"] == '{"a":1}'
    assert answer["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in answer["choices"][0]["message"]
