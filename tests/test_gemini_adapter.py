"""The Gemini adapter: request translation, responses and streams from a strict fake Gemini, errors."""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import msgspec
import pytest

from tests.fakes.gemini_server import GeminiFakeState, create_gemini_app
from tests.fakes.server import ThreadedServer
from tests.harness import reassemble, sse_events
from workers.providers.base import RequestSpec, Upstream, UpstreamError
from workers.providers.gemini import GeminiAdapter, embeddings_request, embeddings_response
from workers.providers.gemini_request import DUMMY_THOUGHT_SIGNATURE
from workers.providers.gemini_schema import clean_schema

KEY = "test-gemini-key"
adapter = GeminiAdapter()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "city": {"type": "string", "pattern": "^[A-Z]", "default": "Paris"},
                "unit": {"anyOf": [{"$ref": "#/$defs/Unit"}, {"type": "null"}]},
                "days": {"type": ["integer", "null"], "format": "int32"},
            },
            "required": ["city", "ghost"],
            "$defs": {"Unit": {"type": "string", "enum": ["C", "F"], "additionalProperties": False}},
        },
    },
}


def upstream(base: str = "https://generativelanguage.googleapis.com", key: str | None = KEY) -> Upstream:
    return Upstream(provider="google", kind="gemini", base_url=base, api_key=key, auth="x-goog-api-key")


def payload(spec: RequestSpec) -> dict[str, Any]:
    return msgspec.json.decode(spec.content)


def translate(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return payload(adapter.chat_request(upstream(), "gemini-2.5-flash", body, stream))


# ---------------------------------------------------------------- request translation


def test_urls_auth_and_base_ending_in_v1beta() -> None:
    spec = adapter.chat_request(upstream(), "gemini-2.5-flash", {"messages": [{"role": "user", "content": "hi"}]}, False)
    assert spec.method == "POST"
    assert spec.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert spec.headers["x-goog-api-key"] == KEY and "authorization" not in spec.headers
    stream = adapter.chat_request(upstream("https://example.test/v1beta/"), "models/gemini-2.5-pro",
                                  {"messages": [{"role": "user", "content": "hi"}]}, True)
    assert stream.url == "https://example.test/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


def test_system_roles_and_user_parts() -> None:
    body = translate({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.test/cat.webp?size=2"}},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Thanks"},
    ]})
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse.\n\nUse metric."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.test/cat.webp?size=2"}},
    ]
    assert body["contents"][1]["parts"] == [{"text": "A cat."}]


def test_generation_config_fields() -> None:
    body = translate({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9,
                      "max_tokens": 50, "max_completion_tokens": 256, "stop": "END", "n": 2, "seed": 7,
                      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                          "type": "object", "additionalProperties": False,
                          "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}})
    assert body["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 256, "stopSequences": ["END"], "candidateCount": 2,
        "seed": 7, "responseMimeType": "application/json",
        "responseSchema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    }
    plain = translate({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}})
    assert plain["generationConfig"] == {"responseMimeType": "application/json"}
    assert "generationConfig" not in translate({"messages": [{"role": "user", "content": "hi"}]})


def test_tool_schema_is_cleaned_of_unsupported_keys() -> None:
    body = translate({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]})
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather" and declaration["description"] == "Weather for a city"
    assert declaration["parameters"] == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["C", "F"], "nullable": True},
            "days": {"type": "integer", "format": "int32", "nullable": True},
        },
        "required": ["city"],
    }


def test_schema_cleaning_handles_recursion_const_allof_and_bad_formats() -> None:
    schema = {
        "type": "object",
        "definitions": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/definitions/Node"}}}},
        "properties": {
            "tree": {"$ref": "#/definitions/Node"},
            "kind": {"const": "fixed"},
            "email": {"type": "string", "format": "email"},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                               {"properties": {"b": {"type": "number", "exclusiveMinimum": 0}}}]},
            "tags": {"type": "array", "items": {"type": "string", "examples": ["x"]}, "uniqueItems": True},
        },
    }
    cleaned = clean_schema(schema)
    props = cleaned["properties"]
    assert props["tree"] == {"type": "object", "properties": {"child": {"type": "object"}}}
    assert props["kind"] == {"enum": ["fixed"], "type": "string"}
    assert props["email"] == {"type": "string"}
    assert props["both"] == {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}},
                             "required": ["a"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert "definitions" not in cleaned


@pytest.mark.parametrize("choice, expected", [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
])
def test_tool_choice_mapping(choice: Any, expected: dict[str, Any]) -> None:
    body = translate({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL], "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_tool_round_trip_names_merging_and_thought_signature() -> None:
    body = translate({"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
             "extra_content": {"google": {"thought_signature": "c2lnLWE="}}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"time": "12:00"}'},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "user", "content": "And tomorrow?"},
    ]})
    contents = body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "user"]
    assert contents[1]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLWE="},
        {"functionCall": {"name": "get_time", "args": {"city": "Rome"}}},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_time", "response": {"time": "12:00"}}},
        {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
    ]


def test_history_without_signature_gets_the_documented_dummy_on_the_first_call() -> None:
    calls = [{"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for n in range(2)]
    body = translate({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": calls}]})
    parts = body["contents"][1]["parts"]
    assert parts[0]["thoughtSignature"] == DUMMY_THOUGHT_SIGNATURE and "thoughtSignature" not in parts[1]
    up = Upstream(provider="google", kind="gemini", base_url="https://x.test", api_key=KEY,
                  quirks={"no_dummy_thought_signature": True})
    plain = payload(adapter.chat_request(up, "m", {"messages": [{"role": "user", "content": "go"},
                                                                {"role": "assistant", "tool_calls": calls}]}, False))
    assert all("thoughtSignature" not in p for p in plain["contents"][1]["parts"])


def test_tool_message_with_unknown_id_is_a_client_error() -> None:
    with pytest.raises(UpstreamError) as info:
        translate({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]})
    assert info.value.error_type == "invalid_request" and not info.value.retryable and not info.value.fallback


# ---------------------------------------------------------------- responses (non-streaming unit cases)


def test_response_finish_reasons_and_usage() -> None:
    data = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True}, {"text": "It is "}, {"text": "sunny."}]},
        "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 6,
                          "totalTokenCount": 20}}
    result = adapter.chat_response(data)
    choice = result["choices"][0]
    assert choice["message"]["content"] == "It is sunny." and choice["finish_reason"] == "length"
    assert result["usage"]["prompt_tokens"] == 10 and result["usage"]["completion_tokens"] == 10
    assert result["usage"]["total_tokens"] == 20
    safety = {"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}
    assert adapter.chat_response(safety)["choices"][0]["finish_reason"] == "content_filter"


def test_blocked_prompt_and_malformed_function_call() -> None:
    blocked = adapter.chat_response({"promptFeedback": {"blockReason": "SAFETY"}})
    assert blocked["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": ""},
                                     "finish_reason": "content_filter", "logprobs": None}
    with pytest.raises(UpstreamError) as info:
        adapter.chat_response({"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]})
    assert not info.value.retryable and "MALFORMED_FUNCTION_CALL" in info.value.message


# ---------------------------------------------------------------- against the fake server


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[GeminiFakeState, str]]:
    state = GeminiFakeState(api_key=KEY)
    with ThreadedServer(create_gemini_app(state)) as server:
        yield state, server.url


@pytest.fixture
def gemini(fake: tuple[GeminiFakeState, str]) -> Iterator[tuple[GeminiFakeState, Upstream]]:
    state, url = fake
    state.failures.clear()
    state.requests.clear()
    state.function_call = None
    state.repeat_stop = False
    state.thoughts = ""
    state.reply = "Hello from the fake Gemini."
    yield state, upstream(url)


def send(spec: RequestSpec) -> httpx.Response:
    return httpx.request(spec.method, spec.url, headers=spec.headers, content=spec.content, timeout=10)


def run_stream(up: Upstream, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    response = send(adapter.chat_request(up, "gemini-2.5-flash", body, True))
    assert response.status_code == 200, response.text
    translator = adapter.stream_translator()
    chunks: list[dict[str, Any]] = []
    for _, data in sse_events(response.text):  # CRLF or LF line ends alike
        chunks += translator.feed(None, data)
    chunks += translator.close()
    return chunks, response.text


TOOL_BODY = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER_TOOL]}


def test_fake_rejects_untranslated_schema_and_nameless_function_response(gemini) -> None:
    state, up = gemini
    raw = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
           "tools": [{"functionDeclarations": [{"name": "f", "parameters": WEATHER_TOOL["function"]["parameters"]}]}]}
    spec = adapter.chat_request(up, "m", {"messages": [{"role": "user", "content": "hi"}]}, False)
    bad = httpx.post(spec.url, headers=spec.headers, json=raw, timeout=10)
    assert bad.status_code == 400 and "Unknown name" in bad.text
    nameless = {"contents": [{"role": "user", "parts": [{"functionResponse": {"response": {"result": 1}}}]}]}
    assert httpx.post(spec.url, headers=spec.headers, json=nameless, timeout=10).status_code == 400


def test_text_response_over_http(gemini) -> None:
    state, up = gemini
    response = send(adapter.chat_request(up, "gemini-2.5-flash", {"messages": [{"role": "user", "content": "hi"}]}, False))
    assert response.status_code == 200
    result = adapter.chat_response(response.json())
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "Hello from the fake Gemini."}
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] == 5
    assert state.requests[-1]["key_ok"] and state.requests[-1]["method"] == "generateContent"


def test_tool_call_response_and_second_round_over_http(gemini) -> None:
    state, up = gemini
    state.function_call = {"name": "get_weather", "args": {"city": "Paris"}, "thoughtSignature": "c2ln"}
    response = send(adapter.chat_request(up, "gemini-2.5-flash", TOOL_BODY, False))
    assert response.status_code == 200, response.text
    choice = adapter.chat_response(response.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert call["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    # the next round sends the call and its result back: the fake insists on a name and a signature echo
    follow = {**TOOL_BODY, "messages": TOOL_BODY["messages"] + [
        choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]}
    state.function_call = None
    second = send(adapter.chat_request(up, "gemini-2.5-flash", follow, False))
    assert second.status_code == 200, second.text
    sent = state.requests[-1]["body"]["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == "c2ln"
    assert sent[2]["parts"][0]["functionResponse"] == {"name": "get_weather", "response": {"result": "18C"}}


def test_ids_are_unique_across_responses(gemini) -> None:
    state, up = gemini
    state.function_call = {"name": "get_weather", "args": {"city": "Paris"}}
    ids = set()
    for _ in range(2):
        data = send(adapter.chat_request(up, "gemini-2.5-flash", TOOL_BODY, False)).json()
        ids.add(adapter.chat_response(data)["choices"][0]["message"]["tool_calls"][0]["id"])
    assert len(ids) == 2


def test_stream_text_reassembly_and_usage(gemini) -> None:
    state, up = gemini
    state.thoughts = "pondering"
    chunks, raw = run_stream(up, {"messages": [{"role": "user", "content": "hi"}]})
    assert "\r\n\r\n" in raw and "[DONE]" not in raw
    text = reassemble(chunks)["text"]
    assert text == "Hello from the fake Gemini."
    assert "pondering" not in text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["usage"]["prompt_tokens"] > 0
    assert state.requests[-1]["query"] == {"alt": "sse"}


def test_stream_with_repeated_stop_finishes_once_at_the_end(gemini) -> None:
    state, up = gemini
    state.repeat_stop = True
    chunks, _ = run_stream(up, {"messages": [{"role": "user", "content": "hi"}]})
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_tool_call(gemini) -> None:
    state, up = gemini
    state.function_call = {"name": "get_weather", "args": {"city": "Paris"}, "thoughtSignature": "c2ln"}
    chunks, _ = run_stream(up, TOOL_BODY)
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    call = calls[0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["extra_content"]["google"]["thought_signature"] == "c2ln"
    assert chunks[0]["choices"][0]["delta"]["content"] == "Let me check. "
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_tool_call_indices_stay_stable_across_events() -> None:
    translator = adapter.stream_translator()
    event = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "a", "args": {}}},
                                                   {"functionCall": {"name": "b", "args": {"x": 1}}}]}}]}
    first = translator.feed(None, json.dumps(event))[0]["choices"][0]["delta"]["tool_calls"]
    event["candidates"][0]["finishReason"] = "STOP"
    second = translator.feed(None, json.dumps(event))[0]["choices"][0]["delta"]["tool_calls"]
    assert [c["index"] for c in first + second] == [0, 1, 2, 3]
    assert len({c["id"] for c in first + second}) == 4
    assert translator.close()[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_cut_stream_raises_retryable(gemini) -> None:
    state, up = gemini
    state.failures.append("cut")
    with pytest.raises(UpstreamError) as info:
        run_stream(up, {"messages": [{"role": "user", "content": "hi"}]})
    assert info.value.retryable


def test_dropped_connection_is_a_transport_error(gemini) -> None:
    state, up = gemini
    state.failures.append("reset")
    with pytest.raises(httpx.TransportError):
        send(adapter.chat_request(up, "gemini-2.5-flash", {"messages": [{"role": "user", "content": "hi"}]}, True))


def test_inband_stream_error_and_malformed_call_raise() -> None:
    translator = adapter.stream_translator()
    with pytest.raises(UpstreamError) as info:
        translator.feed(None, json.dumps({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}))
    assert info.value.retryable
    with pytest.raises(UpstreamError) as malformed:
        adapter.stream_translator().feed(None, json.dumps(
            {"candidates": [{"content": {"parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}]}))
    assert not malformed.value.retryable


# ---------------------------------------------------------------- errors


def error_of(response: httpx.Response) -> UpstreamError:
    return adapter.error(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


def test_bad_key_is_an_upstream_failure_not_the_clients(gemini) -> None:
    _, good = gemini
    up = upstream(good.base_url, key="wrong")
    response = send(adapter.chat_request(up, "gemini-2.5-flash", {"messages": [{"role": "user", "content": "hi"}]}, False))
    assert response.status_code == 400
    err = error_of(response)
    assert (err.retryable, err.fallback, err.error_type, err.code) == (False, True, "upstream_error", "API_KEY_INVALID")
    assert err.client_status == 502


def test_quota_error_reads_retry_delay(gemini) -> None:
    state, up = gemini
    state.failures.append(429)
    err = error_of(send(adapter.chat_request(up, "m", {"messages": [{"role": "user", "content": "hi"}]}, False)))
    assert err.retryable and err.fallback and err.error_type == "rate_limit_exceeded"
    assert err.retry_after == 7.0 and err.code == "RESOURCE_EXHAUSTED"


def test_unavailable_is_retryable(gemini) -> None:
    state, up = gemini
    state.failures.append(503)
    err = error_of(send(adapter.chat_request(up, "m", {"messages": [{"role": "user", "content": "hi"}]}, False)))
    assert err.retryable and err.status == 503


def test_plain_invalid_argument_is_the_clients_error(gemini) -> None:
    _, up = gemini
    spec = adapter.chat_request(up, "m", {"messages": [{"role": "user", "content": "hi"}]}, False)
    response = httpx.post(spec.url, headers=spec.headers, json={"contents": []}, timeout=10)
    err = error_of(response)
    assert response.status_code == 400
    assert (err.retryable, err.fallback, err.error_type, err.client_status) == (False, False, "invalid_request", 400)


def test_error_without_json_body() -> None:
    err = adapter.error(504, {"retry-after": "3"}, b"<html>gateway timeout</html>")
    assert err.retryable and err.retry_after == 3.0 and "gateway timeout" in err.message


# ---------------------------------------------------------------- embeddings


def test_embeddings_over_http(gemini) -> None:
    state, up = gemini
    spec = embeddings_request(up, "text-embedding-004", ["one", "two"], 4)
    assert spec.url.endswith("/v1beta/models/text-embedding-004:batchEmbedContents")
    assert payload(spec)["requests"][0] == {"model": "models/text-embedding-004",
                                            "content": {"parts": [{"text": "one"}]}, "outputDimensionality": 4}
    response = send(spec)
    assert response.status_code == 200
    vectors = embeddings_response(response.json())
    assert len(vectors) == 2 and all(len(v) == 4 for v in vectors) and vectors[0] != vectors[1]
    with pytest.raises(UpstreamError):
        embeddings_response({"oops": []})
