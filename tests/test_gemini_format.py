"""Gemini's wire format, without a queue: a ``generateContent`` body into the canonical request (strictly, as
Google validates it), canonical answers and streams back into Gemini's, thought signatures both ways,
and the worker's native pass-through rules."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from api.formats.gemini_generate import (GeminiGenerate, GeminiStream, response_from_completion, signature_details,
                                         thought_signature)
from api.formats.gemini_request import canonical_request, count_request
from common.errors import GatewayError
from common.wire import Event, Job, Native
from router.shaping import OutputPlan
from workers.native_gemini import request_body
from workers.providers.base import Upstream
from workers.providers.gemini import model_url

USER = {"role": "user", "parts": [{"text": "Write hello.txt"}]}
CALL = {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {"file_path": "h.txt"}}}]}
ANSWER = {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}]}
CLAUDE_THINKING = [{"type": "reasoning.text", "text": "I will write it.", "signature": "sig_abc",
                    "format": "anthropic-claude-v1", "index": 0}]


def canonical(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    return canonical_request(body, "openai/gpt-4o-mini", stream=stream).canonical


def refused(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        canonical(body)
    assert caught.value.status == 400
    return caught.value


# ------------------------------------------------------------------------------------------- requests


def test_conversation_becomes_canonical_messages() -> None:
    body = canonical({"systemInstruction": {"parts": [{"text": "Be terse."}]}, "contents": [USER, CALL, ANSWER]})
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Write hello.txt"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1_0", "type": "function",
             "function": {"name": "write_file", "arguments": '{"file_path":"h.txt"}'}}]},
        {"role": "tool", "tool_call_id": "call_1_0", "content": "ok"},
    ]


def test_function_responses_pair_by_id_then_by_name() -> None:
    call = {"role": "model", "parts": [
        {"functionCall": {"id": "a1", "name": "read", "args": {}}},
        {"functionCall": {"name": "read", "args": {"n": 2}}}]}
    answer = {"role": "user", "parts": [
        {"functionResponse": {"name": "read", "response": {"x": 2}}},
        {"functionResponse": {"id": "a1", "name": "read", "response": {"output": "first"}}}]}
    messages = canonical({"contents": [USER, call, answer]})["messages"]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [("call_1_1", '{"x":2}'), ("a1", "first")]


@pytest.mark.parametrize("contents, message", [
    ([USER, ANSWER], "function response turn comes immediately after a function call turn"),
    ([USER, CALL, USER], "number of function response parts is equal to the number of function call parts"),
    ([USER, CALL, {"role": "user", "parts": [{"functionResponse": {"name": "other", "response": {}}}]}],
     "no function call named 'other'"),
    ([USER, CALL, {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": "ok"}}]}],
     "expected an object"),
    ([{"role": "system", "parts": [{"text": "x"}]}], "Please use a valid role"),
    ([{"role": "user", "parts": []}], "contents.parts must not be empty"),
    ([{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "AA=="}}]}],
     "exactly one of"),
    ([{"role": "user", "parts": [{"thoughtSignature": "AA=="}]}], "exactly one of"),
    ([{"role": "user", "parts": [{"text": "x", "colour": "red"}]}], 'Unknown name "colour"'),
])
def test_refused_as_gemini_refuses(contents: list[dict[str, Any]], message: str) -> None:
    assert message in refused({"contents": contents}).message


def test_unknown_fields_are_named_at_every_level() -> None:
    assert 'Unknown name "temprature" at \'generation_config\'' in refused(
        {"contents": [USER], "generationConfig": {"temprature": 1}}).message
    assert 'Unknown name "foo"' in refused({"contents": [USER], "foo": 1}).message
    assert 'Unknown name "budget"' in refused(
        {"contents": [USER], "generationConfig": {"thinkingConfig": {"budget": 1}}}).message


def test_snake_case_and_a_lone_parts_object_are_accepted() -> None:
    body = canonical({"system_instruction": {"parts": {"text": "Be terse."}},
                      "contents": [{"role": "user", "parts": {"text": "Hi"}}],
                      "generation_config": {"max_output_tokens": 64, "stop_sequences": ["END"], "top_k": 40}})
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert (body["max_tokens"], body["stop"], body["top_k"]) == (64, ["END"], 40)


def test_media_parts() -> None:
    body = canonical({"contents": [{"role": "user", "parts": [
        {"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/a.pdf"}}]}]})
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "https://example.com/a.pdf"}},
    ]


@pytest.mark.parametrize("config, reasoning, include", [
    ({"includeThoughts": True}, None, True),  # Gemini CLI, to every model: shows thoughts, asks for none
    ({"includeThoughts": True, "thinkingBudget": 8192}, {"max_tokens": 8192}, True),
    ({"thinkingBudget": 1024}, {"max_tokens": 1024}, False),  # thinks; the answer shows no thought text
    ({"thinkingBudget": 0}, {"enabled": False}, False),
    ({"thinkingBudget": -1, "includeThoughts": True}, {"enabled": True}, True),
    ({"thinkingLevel": "HIGH", "includeThoughts": True}, {"effort": "high"}, True),
    ({"thinking_level": "low"}, {"effort": "low"}, False),
])
def test_thinking_config(config: dict[str, Any], reasoning: dict[str, Any] | None, include: bool) -> None:
    decoded = canonical_request({"contents": [USER], "generationConfig": {"thinkingConfig": config}}, "m", stream=False)
    assert decoded.canonical.get("reasoning") == reasoning
    assert decoded.include_thoughts is include


def test_thinking_budget_and_level_together_are_refused() -> None:
    assert "one of thinking budget and thinking level" in refused(
        {"contents": [USER], "generationConfig": {"thinkingConfig": {"thinkingBudget": 1, "thinkingLevel": "LOW"}}}).message


def test_tools_schemas_and_tool_config() -> None:
    body = canonical({
        "contents": [USER],
        "tools": [{"functionDeclarations": [
            {"name": "write_file", "description": "Write", "parameters": {
                "type": "OBJECT", "propertyOrdering": ["path"], "required": ["path"],
                "properties": {"path": {"type": "STRING"}, "mode": {"type": "STRING", "nullable": True,
                                                                    "enum": ["w", "a"]},
                               "lines": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": "5"}}}},
            {"name": "list", "parametersJsonSchema": {"type": "object", "properties": {"dir": {"type": "string"}},
                                                      "additionalProperties": False}},
            {"name": "noop"}]},
            {"codeExecution": {}}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["write_file", "list"]}},
    })
    assert [t["function"]["name"] for t in body["tools"]] == ["write_file", "list"]  # ANY keeps the allowed ones
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["parameters"] == {
        "type": "object", "required": ["path"],
        "properties": {"path": {"type": "string"}, "mode": {"type": ["string", "null"], "enum": ["w", "a"]},
                       "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 5}}}
    assert body["tools"][1]["function"]["parameters"]["additionalProperties"] is False


@pytest.mark.parametrize("mode, allowed, choice", [
    ("AUTO", None, "auto"), ("NONE", None, "none"), ("VALIDATED", None, "auto"),
    ("ANY", ["f"], {"type": "function", "function": {"name": "f"}}),
])
def test_function_calling_modes(mode: str, allowed: list[str] | None, choice: Any) -> None:
    config: dict[str, Any] = {"mode": mode}
    if allowed:
        config["allowedFunctionNames"] = allowed
    body = canonical({"contents": [USER], "tools": [{"functionDeclarations": [{"name": "f"}]}],
                      "toolConfig": {"functionCallingConfig": config}})
    assert body["tool_choice"] == choice


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
    ({"tools": [{"google_maps": {}}]}, "tools[0].googleMaps"),
    ({"serviceTier": "priority"}, "serviceTier"),
    ({"cachedContent": "cachedContents/abc"}, "cachedContent"),
    ({"tools": [{"functionDeclarations": [{"name": "9bad"}]}]}, "tools[0].functionDeclarations[0].name"),
])
def test_what_costs_money_or_cannot_be_served_is_refused(extra: dict[str, Any], param: str) -> None:
    assert refused({"contents": [USER], **extra}).param == param


def test_generation_config() -> None:
    body = canonical({"contents": [USER], "generationConfig": {
        "temperature": 0.2, "topP": 0.9, "topK": 5, "candidateCount": 2, "maxOutputTokens": 100, "seed": 3,
        "presencePenalty": 0.5, "frequencyPenalty": 0.1, "stopSequences": ["a", "b"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}}}}, stream=True)
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "n", "max_tokens", "seed", "presence_penalty",
                                 "frequency_penalty", "stop")} == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 5, "n": 2, "max_tokens": 100, "seed": 3, "presence_penalty": 0.5,
        "frequency_penalty": 0.1, "stop": ["a", "b"]}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "response", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert canonical({"contents": [USER], "generationConfig": {"responseMimeType": "application/json"}})[
        "response_format"] == {"type": "json_object"}


def test_count_tokens_bodies() -> None:
    assert count_request({"contents": [USER]}, "m")["messages"] == [{"role": "user", "content": "Write hello.txt"}]
    inner = count_request({"generateContentRequest": {"model": "models/m", "contents": [USER],
                                                      "systemInstruction": {"parts": [{"text": "S"}]}}}, "m")
    assert inner["messages"][0] == {"role": "system", "content": "S"}


# ------------------------------------------------------------------------------------------ signatures


def test_another_providers_reasoning_travels_in_our_signature_and_comes_back() -> None:
    completion = {"id": "chatcmpl-1", "model": "anthropic/claude-sonnet-4-5", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Writing it.", "reasoning": "I will write it.",
            "reasoning_details": CLAUDE_THINKING,
            "tool_calls": [{"id": "toolu_1", "type": "function",
                            "function": {"name": "write_file", "arguments": '{"file_path":"h.txt"}'}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                  "completion_tokens_details": {"reasoning_tokens": 3}}}
    response = response_from_completion(completion, include_thoughts=True)
    parts = response["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "I will write it.", "thought": True}
    assert parts[1] == {"text": "Writing it."}
    call = parts[2]
    assert call["functionCall"] == {"id": "toolu_1", "name": "write_file", "args": {"file_path": "h.txt"}}
    assert signature_details(call["thoughtSignature"]) == CLAUDE_THINKING
    assert response["candidates"][0]["finishReason"] == "STOP"
    assert response["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 3,
                                         "totalTokenCount": 17}
    assert response["modelVersion"] == "anthropic/claude-sonnet-4-5"
    # the client sends the turn back as it came, minus thought text (Gemini CLI drops it)
    back = canonical({"contents": [USER, {"role": "model", "parts": parts[1:]},
                                   {"role": "user", "parts": [{"functionResponse": {
                                       "id": "toolu_1", "name": "write_file", "response": {"output": "ok"}}}]}]})
    assistant = back["messages"][1]
    assert assistant["reasoning_details"] == CLAUDE_THINKING
    assert assistant["tool_calls"][0]["id"] == "toolu_1" and back["messages"][2]["tool_call_id"] == "toolu_1"


def test_googles_signatures_stay_on_their_part() -> None:
    completion = {"choices": [{"finish_reason": "tool_calls", "message": {
        "content": None, "tool_calls": [{"id": "call_9", "function": {"name": "f", "arguments": "{}"},
                                         "extra_content": {"google": {"thought_signature": "R29vZ2xl"}}}],
        "reasoning_details": [{"type": "reasoning.encrypted", "data": "R29vZ2xl", "format": "google-gemini-v1",
                               "id": "call_9", "index": 1}]}}]}
    parts = response_from_completion(completion, include_thoughts=False)["candidates"][0]["content"]["parts"]
    assert parts == [{"functionCall": {"id": "call_9", "name": "f", "args": {}}, "thoughtSignature": "R29vZ2xl"}]
    back = canonical({"contents": [USER, {"role": "model", "parts": parts}]})
    assert back["messages"][1]["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": "R29vZ2xl", "format": "google-gemini-v1", "index": 1, "id": "call_9"}]


def test_an_altered_signature_of_ours_is_refused() -> None:
    signature = thought_signature(CLAUDE_THINKING)
    call = {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}},
                                        "thoughtSignature": signature[:-6] + "AAAA=="}]}
    assert "altered" in refused({"contents": [USER, call]}).message


def test_thoughts_only_when_asked() -> None:
    completion = {"choices": [{"message": {"content": "Hi", "reasoning": "hmm"}, "finish_reason": "stop"}]}
    assert response_from_completion(completion, include_thoughts=False)["candidates"][0]["content"]["parts"] == [
        {"text": "Hi"}]


def test_unsigned_reasoning_text_is_not_carried_in_a_signature() -> None:
    """Only what a provider verifies travels back (a signed thinking block, encrypted reasoning): plain
    reasoning text (DeepSeek's, Qwen's) would only make every later request bigger."""
    details = [{"type": "reasoning.text", "text": "long musing " * 50, "format": "openai-compatible", "index": 0}]
    completion = {"choices": [{"message": {"content": "Hi", "reasoning_details": details}, "finish_reason": "stop"}]}
    assert response_from_completion(completion, include_thoughts=False)["candidates"][0]["content"]["parts"] == [
        {"text": "Hi"}]


# -------------------------------------------------------------------------------------------- streams


def frames_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in data.split(b"\r\n\r\n") if line.startswith(b"data: ")]


def canonical_frames(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + msgspec.json.encode({"id": "chatcmpl-7", "model": "openai/gpt-4o-mini", **c})
                    + b"\n\n" for c in chunks)


def test_stream_text_as_it_comes_calls_whole_at_the_end() -> None:
    stream = GeminiStream(include_thoughts=False)
    first = stream.frames(Event("r", 0, 1, "data", canonical_frames(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me "}}]},
        {"choices": [{"index": 0, "delta": {"content": "write."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "write_file", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"file_'}}]}}]})))
    last = stream.frames(Event("r", 0, 2, "done", canonical_frames(
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'path":"a"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
    ) + b"data: [DONE]\n\n"))
    texts = [f["candidates"][0]["content"]["parts"] for f in frames_of(first)]
    assert texts == [[{"text": "Let me "}], [{"text": "write."}]]
    (final,) = frames_of(last)
    assert final["candidates"] == [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "call_1", "name": "write_file", "args": {"file_path": "a"}}}]},
        "finishReason": "STOP", "index": 0}]
    assert final["usageMetadata"] == {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14}
    assert final["modelVersion"] == "openai/gpt-4o-mini" and final["responseId"] == "chatcmpl-7"


def test_stream_error_and_keepalive_are_what_googles_sdks_read() -> None:
    stream = GeminiGenerate().stream()
    envelope = GatewayError("upstream_error", "boom").body()
    line = stream.error(502, envelope)
    assert not line.startswith(b"data:") and line.endswith(b"\n")  # a bare JSON object, as Google sends it
    assert json.loads(line) == {"error": {"code": 502, "message": "boom", "status": "UNAVAILABLE"},
                                "error_type": "upstream_error"}
    assert stream.keepalive.strip() == b""  # the SDKs choke on SSE comments; a blank line they skip


def test_native_events_pass_through() -> None:
    raw = b'data: {"candidates":[]}\r\n\r\n'
    assert GeminiGenerate().stream().frames(Event("r", 0, 1, "data", raw, native=True)) == raw


# --------------------------------------------------------------------------------------------- worker


def test_model_ids_are_escaped_in_upstream_urls() -> None:
    up = Upstream(provider="google", kind="gemini", base_url="https://generativelanguage.googleapis.com")
    assert model_url(up, "gemini-2.5-flash", "generateContent") == \
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert model_url(up, "models/x/../../files?key=1#", "countTokens") == \
        "https://generativelanguage.googleapis.com/v1beta/models/x%2F..%2F..%2Ffiles%3Fkey%3D1%23:countTokens"


def test_native_body_clips_output_and_drops_our_signatures() -> None:
    ours = thought_signature(CLAUDE_THINKING)
    body = {"model": "openai/gpt-4o-mini", "generation_config": {"max_output_tokens": 99999},
            "contents": [USER, {"role": "model", "parts": [
                {"text": "x", "thoughtSignature": ours},
                {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": ours},
                {"functionCall": {"name": "g", "args": {}}, "thoughtSignature": "R29vZ2xl"}]}]}
    job = Job(kind="chat", request_id="r", reply_channel="c", attempt=0, plan=[], deadline=0,
              native=Native(protocol="gemini_generate", body=msgspec.json.encode(body)))
    sent = request_body(job, OutputPlan(cap=8192, budget=None, choices=1))
    assert "model" not in sent and sent["generation_config"] == {"maxOutputTokens": 8192}  # the plan's cap
    parts = sent["contents"][1]["parts"]
    assert parts[0] == {"text": "x"}
    assert parts[1]["thoughtSignature"] == "skip_thought_signature_validator"
    assert parts[2]["thoughtSignature"] == "R29vZ2xl"


def test_several_candidates() -> None:
    completion = {"choices": [{"index": 0, "message": {"content": "A"}, "finish_reason": "stop"},
                              {"index": 1, "message": {"content": "B"}, "finish_reason": "length"}]}
    candidates = response_from_completion(completion, include_thoughts=False)["candidates"]
    assert [(c["index"], c["content"]["parts"], c["finishReason"]) for c in candidates] == [
        (0, [{"text": "A"}], "STOP"), (1, [{"text": "B"}], "MAX_TOKENS")]
    stream = GeminiStream(include_thoughts=False)
    frames = frames_of(stream.frames(Event("r", 0, 1, "done", canonical_frames(
        {"choices": [{"index": 1, "delta": {"content": "B"}}]}, {"choices": [{"index": 0, "delta": {"content": "A"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"},
                     {"index": 1, "delta": {}, "finish_reason": "length"}]}))))
    assert [f["candidates"][0]["index"] for f in frames[:2]] == [1, 0]
    assert [(c["index"], c["finishReason"]) for c in frames[-1]["candidates"]] == [(0, "STOP"), (1, "MAX_TOKENS")]
