"""Reasoning, prompt caching, structured output and cost, as a new user meets them: the OpenAI SDK → gateway →
the fakes of Anthropic, Gemini and an OpenAI-compatible upstream (each strict where the real API is).

Every test asserts both sides: the native form the fake received, and the canonical form the client got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app, signature_of
from tests.fakes.gemini_server import GeminiFakeState, create_gemini_app
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, configured_gateway, sdk_for

SONNET_45 = "anthropic/claude-sonnet-4-5"  # native structured output
SONNET_4 = "anthropic/claude-sonnet-4-0"  # structured output through the forced tool
GEMINI = "google/gemini-2.5-flash"
GEMINI_3 = "google/gemini-3-pro-preview"
O4 = "openai/o4-mini"

FREE_MODELS = (SONNET_45, SONNET_4, GEMINI, GEMINI_3, O4)  # free here: the tests call them anonymously

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
               "required": ["city", "population"], "additionalProperties": False}
ANSWER = {"city": "Paris", "population": 2102650}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    anthropic, gemini, compat = (AnthropicFakeState(api_key="sk-ant-test"), GeminiFakeState(api_key="g-key"),
                                 OpenAIFakeState())
    with ThreadedServer(create_anthropic_app(anthropic)) as a, ThreadedServer(create_gemini_app(gemini)) as g, \
            ThreadedServer(create_openai_app(compat)) as o:
        yield {"anthropic": (anthropic, a.url), "gemini": (gemini, g.url), "openai": (compat, o.url)}


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
            servers: dict[str, Any]) -> Iterator[GatewayHarness]:
    with configured_gateway(redis_url, tmp_path_factory.mktemp("reasoning"), ("anthropic", "google", "openai"),
                            *FREE_MODELS, ANTHROPIC_BASE_URL=servers["anthropic"][1], ANTHROPIC_API_KEY="sk-ant-test",
                            GEMINI_BASE_URL=servers["gemini"][1], GEMINI_API_KEY="g-key",
                            OPENAI_BASE_URL=servers["openai"][1] + "/v1", OPENAI_API_KEY="sk-upstream-test") as harness:
        yield harness


@pytest.fixture
def fakes(servers: dict[str, Any]) -> dict[str, Any]:
    """The module's fakes, reset: one gateway serves the module, each test starts clean."""
    servers["anthropic"][0].__dict__.update(vars(AnthropicFakeState(api_key="sk-ant-test")))
    servers["gemini"][0].__dict__.update(vars(GeminiFakeState(api_key="g-key")))
    servers["openai"][0].reset()
    return {name: state for name, (state, _) in servers.items()}


@pytest.fixture
def sdk(gateway: GatewayHarness, fakes: dict[str, Any]) -> openai.OpenAI:
    return sdk_for(gateway.url)  # anonymous: the models are free here


def _stream(sdk: openai.OpenAI, **kw: Any) -> dict[str, Any]:
    """Reassemble a stream: text, reasoning, details by index, tool calls, usage, and what came first."""
    text, thoughts, order, usage = "", "", [], None
    details: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[str, str]] = {}
    for chunk in sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta.model_dump()
            if delta.get("reasoning"):
                thoughts += delta["reasoning"]
                order.append("reasoning")
            if delta.get("content"):
                text += delta["content"]
                order.append("content")
            for piece in delta.get("reasoning_details") or ():  # pieces of one index concatenate
                entry = details.get(piece["index"])
                if entry is None:
                    details[piece["index"]] = dict(piece)
                    continue
                for name in ("text", "data"):
                    if piece.get(name):
                        entry[name] = (entry.get(name) or "") + piece[name]
                entry["signature"] = piece.get("signature") or entry.get("signature")
            for call in choice.delta.tool_calls or ():
                entry2 = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry2["id"] += call.id or ""
                entry2["name"] += (call.function and call.function.name) or ""
                entry2["arguments"] += (call.function and call.function.arguments) or ""
    return {"text": text, "reasoning": thoughts, "order": order, "usage": usage,
            "details": [details[i] for i in sorted(details)], "calls": [calls[i] for i in sorted(calls)]}


# ---------------------------------------------------------------- Anthropic: thinking in, out and back


def test_reasoning_effort_becomes_thinking_and_returns_signed_reasoning(sdk: openai.OpenAI,
                                                                       fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    completion = sdk.chat.completions.create(model=SONNET_4, reasoning_effort="high", temperature=0.3,
                                             messages=[{"role": "user", "content": "Think, then answer."}])
    sent = state.requests[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert sent["max_tokens"] > 16384 and "temperature" not in sent  # raised; temperature Anthropic refuses
    message = completion.choices[0].message.model_dump()
    assert message["content"] == state.reply
    assert message["reasoning"] == state.thinking
    assert message["reasoning_details"] == [{"type": "reasoning.text", "text": state.thinking, "index": 0,
                                             "signature": signature_of(state.thinking),
                                             "format": "anthropic-claude-v1"}]


def test_openrouter_reasoning_object_with_a_budget_and_redacted_thinking(sdk: openai.OpenAI,
                                                                         fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    state.redacted = "EncryptedOpaqueBlob=="
    completion = sdk.chat.completions.create(model=SONNET_4, max_tokens=3000, extra_body={
        "reasoning": {"max_tokens": 2000}}, messages=[{"role": "user", "content": "hi"}])
    sent = state.requests[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2000} and sent["max_tokens"] == 3000
    details = completion.choices[0].message.model_dump()["reasoning_details"]
    assert [d["type"] for d in details] == ["reasoning.text", "reasoning.encrypted"]
    assert details[1]["data"] == "EncryptedOpaqueBlob==" and details[1]["index"] == 1


def test_streamed_thinking_arrives_before_the_answer_with_its_signature(sdk: openai.OpenAI,
                                                                      fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    got = _stream(sdk, model=SONNET_4, reasoning_effort="low", messages=[{"role": "user", "content": "hi"}])
    assert state.requests[-1]["body"]["thinking"]["budget_tokens"] == 2048
    assert got["reasoning"] == state.thinking and got["text"] == state.reply
    assert got["order"][0] == "reasoning" and got["order"].index("content") > 1  # several pieces, each at once
    assert got["details"] == [{"type": "reasoning.text", "text": state.thinking, "index": 0,
                               "signature": signature_of(state.thinking), "format": "anthropic-claude-v1"}]


def test_exclude_thinks_but_answers_without_reasoning(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    completion = sdk.chat.completions.create(model=SONNET_4, extra_body={"reasoning": {"effort": "low",
                                                                                       "exclude": True}},
                                             messages=[{"role": "user", "content": "hi"}])
    assert state.requests[-1]["body"]["thinking"]["type"] == "enabled"
    message = completion.choices[0].message.model_dump()
    assert message["content"] == state.reply and "reasoning" not in message and "reasoning_details" not in message
    got = _stream(sdk, model=SONNET_4, extra_body={"reasoning": {"effort": "low", "exclude": True}},
                  messages=[{"role": "user", "content": "hi"}])
    assert got["reasoning"] == "" and got["details"] == [] and got["text"] == state.reply


@pytest.mark.parametrize("stream", [False, True])
def test_three_turns_of_thinking_and_tools_against_the_strict_fake(sdk: openai.OpenAI, fakes: dict[str, Any],
                                                                   stream: bool) -> None:
    """The agent loop that breaks on its second turn when signatures are dropped: think, call, think, call, answer."""
    state: AnthropicFakeState = fakes["anthropic"]
    state.tool_call = {"name": "get_weather", "input": {"city": "Paris"}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris, then in Rome?"}]
    for turn in range(3):
        if turn == 2:
            state.tool_call = None
        kw = {"model": SONNET_4, "reasoning_effort": "medium", "tools": [WEATHER_TOOL], "messages": messages}
        if stream:
            got = _stream(sdk, **kw)
            message: dict[str, Any] = {"role": "assistant", "content": got["text"] or None,
                                       "reasoning_details": got["details"]}
            if got["calls"]:
                message["tool_calls"] = [{"id": c["id"], "type": "function",
                                          "function": {"name": c["name"], "arguments": c["arguments"]}}
                                         for c in got["calls"]]
        else:
            message = sdk.chat.completions.create(**kw).choices[0].message.model_dump(exclude_none=True)
        assert message["reasoning_details"][0]["signature"] == signature_of(state.thinking)
        messages.append(message)
        for call in message.get("tool_calls") or ():
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'})
    assert messages[-1]["content"] == state.reply and "tool_calls" not in messages[-1]
    sent = state.requests[-1]["body"]["messages"]
    assistant = [m for m in sent if m["role"] == "assistant"]
    assert len(assistant) == 2
    for turn in assistant:  # rebuilt natively, thinking first, signature intact
        assert turn["content"][0] == {"type": "thinking", "thinking": state.thinking,
                                      "signature": signature_of(state.thinking)}
        assert turn["content"][-1]["type"] == "tool_use"


def test_strict_fake_rejects_a_missing_signature(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    """The fake is as strict as Anthropic: returning the tool call without the signed thinking is a 400."""
    state: AnthropicFakeState = fakes["anthropic"]
    state.tool_call = {"name": "get_weather", "input": {"city": "Paris"}}
    kw = {"model": SONNET_4, "reasoning_effort": "medium", "tools": [WEATHER_TOOL]}
    first = sdk.chat.completions.create(messages=[{"role": "user", "content": "Weather?"}], **kw).choices[0].message
    stripped = {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in first.tool_calls or ()]}
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):
        sdk.chat.completions.create(messages=[{"role": "user", "content": "Weather?"}, stripped,
                                              {"role": "tool", "tool_call_id": stripped["tool_calls"][0]["id"],
                                               "content": "sunny"}], **kw)


# ---------------------------------------------------------------- Anthropic: caching and structured output


def test_cache_control_on_every_block_and_the_beta_header_reach_anthropic(sdk: openai.OpenAI,
                                                                         fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    state.cache_read_tokens, state.cache_write_tokens = 9000, 0
    ephemeral, hour = {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}
    tool = {**WEATHER_TOOL, "cache_control": hour}
    raw = sdk.chat.completions.with_raw_response.create(
        model=SONNET_4, tools=[tool], extra_headers={"anthropic-beta": "extended-cache-ttl-2025-04-11"},
        messages=[{"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": ephemeral},
                                                 {"type": "text", "text": "Short tail."}]},
                  {"role": "user", "content": [
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                       "cache_control": ephemeral},
                      {"type": "text", "text": "Describe.", "cache_control": ephemeral}]}])
    sent = state.requests[-1]
    assert sent["headers"]["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    body = sent["body"]
    assert body["system"] == [{"type": "text", "text": "Long rules.", "cache_control": ephemeral},
                              {"type": "text", "text": "Short tail."}]
    assert body["tools"][0]["cache_control"] == hour
    assert [b.get("cache_control") for b in body["messages"][0]["content"]] == [ephemeral, ephemeral]
    usage = raw.parse().usage.model_dump()
    assert usage["prompt_tokens"] == state.input_tokens + 9000  # all input, OpenAI semantics
    assert usage["prompt_tokens_details"]["cached_tokens"] == 9000
    assert usage["prompt_tokens_details"]["cache_write_tokens"] == 0


def test_a_cached_request_costs_less_than_the_same_uncached(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    state.input_tokens = 10
    messages = [{"role": "user", "content": [{"type": "text", "text": "Long document.",
                                              "cache_control": {"type": "ephemeral"}}]}]
    state.cache_read_tokens = 0
    state.cache_write_tokens = 5000
    written = sdk.chat.completions.create(model=SONNET_4, messages=messages).usage
    state.cache_read_tokens, state.cache_write_tokens = 5000, 0
    cached = sdk.chat.completions.create(model=SONNET_4, messages=messages).usage
    state.input_tokens, state.cache_read_tokens = 5010, 0
    uncached = sdk.chat.completions.create(model=SONNET_4, messages=messages).usage
    assert written and cached and uncached
    assert written.prompt_tokens == cached.prompt_tokens == uncached.prompt_tokens == 5010
    costs = [u.model_dump()["cost"] for u in (written, cached, uncached)]
    assert all(isinstance(c, float) for c in costs)  # a JSON number, like OpenRouter's
    out = written.completion_tokens * Decimal("0.000015")
    assert Decimal(str(costs[0])) == 10 * Decimal("0.000003") + 5000 * Decimal("0.00000375") + out
    assert Decimal(str(costs[1])) == 10 * Decimal("0.000003") + 5000 * Decimal("0.0000003") + out
    assert costs[1] < costs[2] < costs[0]


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_on_a_claude_without_native_structured_output(sdk: openai.OpenAI, fakes: dict[str, Any],
                                                                  stream: bool) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    state.json_answer = ANSWER
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    kw = {"model": SONNET_4, "response_format": fmt, "messages": [{"role": "user", "content": "Paris?"}]}
    if stream:
        got = _stream(sdk, **kw)
        text, calls = got["text"], got["calls"]
    else:
        choice = sdk.chat.completions.create(**kw).choices[0]
        text, calls = choice.message.content, choice.message.tool_calls
        assert choice.finish_reason == "stop"
    body = state.requests[-1]["body"]
    assert body["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert body["tools"][0]["input_schema"] == CITY_SCHEMA
    assert json.loads(text or "") == ANSWER and not calls


def test_json_schema_on_a_claude_with_native_structured_output(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    state.json_answer = ANSWER
    completion = sdk.chat.completions.create(
        model=SONNET_45, reasoning_effort="low", messages=[{"role": "user", "content": "Paris?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}})
    body = state.requests[-1]["body"]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": CITY_SCHEMA}}
    assert "tools" not in body and body["thinking"]["type"] == "enabled"
    assert json.loads(completion.choices[0].message.content or "") == ANSWER


def test_structured_output_that_cannot_be_honoured_is_a_clear_400(sdk: openai.OpenAI,
                                                                  fakes: dict[str, Any]) -> None:
    state: AnthropicFakeState = fakes["anthropic"]
    with pytest.raises(openai.BadRequestError, match="response_format together with tools"):
        sdk.chat.completions.create(model=SONNET_4, tools=[WEATHER_TOOL],
                                    response_format={"type": "json_schema", "json_schema": {
                                        "name": "c", "schema": CITY_SCHEMA}},
                                    messages=[{"role": "user", "content": "Paris?"}])
    assert state.requests == []  # refused before any call


# ---------------------------------------------------------------- Gemini


def test_gemini_thinking_config_and_thoughts(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: GeminiFakeState = fakes["gemini"]
    state.thoughts = "Considering the options."
    completion = sdk.chat.completions.create(model=GEMINI, reasoning_effort="low",
                                             messages=[{"role": "user", "content": "hi"}])
    config = state.requests[-1]["body"]["generationConfig"]
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 2048}
    message = completion.choices[0].message.model_dump()
    assert message["reasoning"] == "Considering the options."
    assert message["reasoning_details"][0]["format"] == "google-gemini-v1"
    got = _stream(sdk, model=GEMINI_3, extra_body={"reasoning": {"effort": "high"}},
                  messages=[{"role": "user", "content": "hi"}])
    assert state.requests[-1]["body"]["generationConfig"]["thinkingConfig"] == {"includeThoughts": True,
                                                                                "thinkingLevel": "high"}
    assert got["reasoning"] == "Considering the options." and got["order"][0] == "reasoning"


# ---------------------------------------------------------------- OpenAI-compatible


def test_openai_gets_reasoning_effort_never_the_object(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: OpenAIFakeState = fakes["openai"]
    state.reasoning = "First I weigh it."
    completion = sdk.chat.completions.create(
        model=O4, extra_body={"reasoning": {"effort": "high"}},
        messages=[{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "earlier", "reasoning_details": [
                      {"type": "reasoning.text", "text": "old", "format": "anthropic-claude-v1"}]},
                  {"role": "user", "content": "again"}])
    sent = state.requests[-1]["body"]
    assert sent["reasoning_effort"] == "high" and "reasoning" not in sent
    assert "reasoning_details" not in sent["messages"][1]
    message = completion.choices[0].message.model_dump()
    assert message["reasoning"] == "First I weigh it." and message["reasoning_details"][0]["text"] == message["reasoning"]
    got = _stream(sdk, model=O4, reasoning_effort="low", messages=[{"role": "user", "content": "hi"}])
    assert got["reasoning"] == "First I weigh it."
    assert got["order"][0] == "reasoning"


def test_openai_cached_tokens_are_billed_at_the_cache_rate(sdk: openai.OpenAI, fakes: dict[str, Any]) -> None:
    state: OpenAIFakeState = fakes["openai"]
    messages = [{"role": "user", "content": "x" * 400}]
    plain = sdk.chat.completions.create(model=O4, messages=messages).usage
    state.cached_tokens = 64
    cached = sdk.chat.completions.create(model=O4, messages=messages).usage
    assert plain and cached and plain.prompt_tokens == cached.prompt_tokens
    saved = Decimal(str(plain.model_dump()["cost"])) - Decimal(str(cached.model_dump()["cost"]))
    assert saved == 64 * (Decimal("0.0000011") - Decimal("0.000000275"))


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_thought_signatures_round_trip_in_reasoning_details(sdk: openai.OpenAI, fakes: dict[str, Any],
                                                                   stream: bool) -> None:
    """A client that keeps only reasoning_details (OpenRouter's way) still satisfies Gemini 3's signature check."""
    state: GeminiFakeState = fakes["gemini"]
    state.function_call = {"name": "get_weather", "args": {"city": "Paris"}, "thoughtSignature": "gem-sig-1"}
    kw = {"model": GEMINI_3, "tools": [WEATHER_TOOL], "reasoning_effort": "low"}
    first_turn = [{"role": "user", "content": "Weather?"}]
    if stream:
        got = _stream(sdk, messages=first_turn, **kw)
        call, details = got["calls"][0], got["details"]
    else:
        message = sdk.chat.completions.create(messages=first_turn, **kw).choices[0].message.model_dump()
        call = {"id": message["tool_calls"][0]["id"], **message["tool_calls"][0]["function"]}
        details = message["reasoning_details"]
    assert [d for d in details if d["type"] == "reasoning.encrypted"] == [
        {"type": "reasoning.encrypted", "data": "gem-sig-1", "format": "google-gemini-v1", "index": 1,
         "id": call["id"]}]
    state.function_call = None
    assistant = {"role": "assistant", "content": None, "reasoning_details": details, "tool_calls": [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]}
    answer = sdk.chat.completions.create(messages=[*first_turn, assistant, {
        "role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'}], **kw)
    assert answer.choices[0].message.content == state.reply
    sent = state.requests[-1]["body"]["contents"][1]["parts"][0]
    assert sent["thoughtSignature"] == "gem-sig-1"
