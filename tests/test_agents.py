"""Coding agents' protocols through the gateway: Anthropic Messages (the official ``anthropic`` SDK) and
OpenAI Responses (the official ``openai`` SDK's ``client.responses``), against the OpenAI-compatible,
Anthropic and Gemini fakes, which are real local HTTP servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.responses import JSONResponse

from tests.fakes.anthropic_server import message_body, stream_events
from tests import harness, responses_grammar
from tests.harness import GatewayHarness, config_file, create_key, env_for, tokens_text

GPT = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-3-5-haiku-latest"
GEMINI = "google/gemini-2.5-flash"
MODELS = [GPT, CLAUDE, GEMINI]
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Fakes(harness.Fakes):
    def answer_with_tool(self, model: str, call_id: str = "call_1") -> None:
        self.openai.tool_calls = [{"id": call_id, "name": "get_weather", "arguments": '{"city": "Paris"}'}]
        self.anthropic.tool_call = {"id": call_id, "name": "get_weather", "input": {"city": "Paris"}}
        self.gemini.function_call = {"name": "get_weather", "args": {"city": "Paris"}}

    def last_body(self, model: str) -> dict[str, Any]:
        state = {GPT: self.openai, CLAUDE: self.anthropic, GEMINI: self.gemini}[model]
        return state.requests[-1]["body"]


@pytest.fixture(scope="module")
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture(scope="module")
def stack(redis_url: str, fakes: Fakes,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayHarness, str]]:
    config = config_file(tmp_path_factory.mktemp("agents"), text=f'[[models]]\nid = "{CLAUDE}"\nmax_output_tokens = 8192\n\n'
                                                                  f'[[models]]\nid = "{GPT}"\nmax_output_tokens = 16384\n')
    with fakes.serving() as upstreams:
        env = env_for(redis_url, MEGABRAIN_CONFIG=config, MEGABRAIN_UPSTREAM_MAX_RETRIES="0", **upstreams)
        key = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "agents")
        with GatewayHarness.from_env(env, pools=("openai", "anthropic", "google")) as harness:
            yield harness, key


@pytest.fixture
def claude(stack: tuple[GatewayHarness, str], fakes: Fakes) -> "anthropic.Anthropic":
    fakes.reset()
    harness, key = stack
    return anthropic.Anthropic(base_url=harness.url, api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def oai(stack: tuple[GatewayHarness, str], fakes: Fakes) -> openai.OpenAI:
    fakes.reset()
    harness, key = stack
    return openai.OpenAI(base_url=harness.url + "/v1", api_key=key, max_retries=0, timeout=20)


def expected_text(model: str, fakes: Fakes) -> str:
    if model == GPT:
        return tokens_text(fakes.openai.tokens)
    return fakes.anthropic.reply if model == CLAUDE else fakes.gemini.reply


# ------------------------------------------------------------------------------ Anthropic Messages


@pytest.mark.parametrize("model", MODELS)
def test_messages_create(claude: "anthropic.Anthropic", fakes: Fakes, model: str) -> None:
    message = claude.messages.create(model=model, max_tokens=200, system="Be brief.",
                                     messages=[{"role": "user", "content": "Hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == expected_text(model, fakes)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.model == model


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream(claude: "anthropic.Anthropic", fakes: Fakes, model: str) -> None:
    kinds = []
    with claude.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert final.content[0].text == expected_text(model, fakes)
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_round_trip(claude: "anthropic.Anthropic", fakes: Fakes, model: str, stream: bool) -> None:
    fakes.answer_with_tool(model, "toolu_01")
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 200, "tools": [WEATHER],
                              "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    if stream:
        with claude.messages.stream(**kwargs) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**kwargs)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    fakes.reset()
    second = claude.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
    ])
    assert second.content[0].text == expected_text(model, fakes)
    sent = json.dumps(fakes.last_body(model))
    assert "Sunny, 21 C" in sent


@pytest.mark.parametrize("stream", [False, True])
def test_messages_keep_a_gemini_thought_signature_for_the_next_turn(claude: "anthropic.Anthropic", fakes: Fakes,
                                                                   stream: bool) -> None:
    """Claude Code on a Gemini model: the function call's thoughtSignature comes back in a thinking block's
    signature (sealed), and the next turn's call part carries the real one, not the validator-skip dummy."""
    fakes.gemini.function_call = {"name": "get_weather", "args": {"city": "Paris"}, "thoughtSignature": "gem-sig-7"}
    kwargs: dict[str, Any] = {"model": GEMINI, "max_tokens": 200, "tools": [WEATHER],
                              "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    if stream:
        with claude.messages.stream(**kwargs) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**kwargs)
    assert "gem-sig-7" not in json.dumps(first.model_dump())  # opaque to the client, as Anthropic's are
    use = next(b for b in first.content if b.type == "tool_use")
    fakes.gemini.function_call = None
    claude.messages.create(model=GEMINI, max_tokens=200, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
    ])
    call = next(p for p in fakes.gemini.requests[-1]["body"]["contents"][1]["parts"] if "functionCall" in p)
    assert call["thoughtSignature"] == "gem-sig-7"


def test_messages_to_anthropic_is_native(claude: "anthropic.Anthropic", fakes: Fakes) -> None:
    """To an Anthropic upstream the client's body goes as it came: unknown fields and beta header too,
    max_tokens clipped to the model's limit."""
    response = claude.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=200_000, messages=[{"role": "user", "content": [
            {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]}],
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
        extra_query={"beta": "true"},
    )
    assert response.http_response.status_code == 200
    sent = fakes.anthropic.requests[-1]
    assert sent["body"]["context_management"]["edits"][0]["keep"] == "all"
    assert sent["body"]["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["body"]["model"] == "claude-3-5-haiku-latest"
    assert sent["body"]["max_tokens"] == 8192  # the model's output limit (from the config here)
    assert sent["headers"]["anthropic-beta"] == "context-management-2025-06-27"
    assert response.http_response.headers["x-megabrain-provider"] == "anthropic"
    # the answer comes back byte for byte but for its ``model``: the id the client sent (README)
    upstream_bytes = JSONResponse(message_body(fakes.anthropic, sent["body"])).body
    assert response.http_response.content == upstream_bytes.replace(b'"model":"claude-3-5-haiku-latest"',
                                                                     b'"model":"' + CLAUDE.encode() + b'"')


def test_messages_stream_to_anthropic_is_native(claude: "anthropic.Anthropic", fakes: Fakes) -> None:
    """A native stream is the upstream's events as they came: every event after ``message_start`` byte for
    byte, ``message_start`` naming the model id the client sent."""
    fakes.anthropic.chunk_chars = 4
    with claude.messages.with_streaming_response.create(
            model=CLAUDE, max_tokens=100, stream=True, messages=[{"role": "user", "content": "Hello"}]) as response:
        body = response.http_response.read()
    sent = fakes.anthropic.requests[-1]["body"]
    upstream_events = stream_events(fakes.anthropic, sent, None)
    ours = body.split(b"\n\n")[:-1]
    assert [event + b"\n\n" for event in ours[1:]] == upstream_events[1:]
    start = json.loads(ours[0].split(b"data: ", 1)[1])
    theirs = json.loads(upstream_events[0].split(b"data: ", 1)[1])
    assert start == {**theirs, "message": {**theirs["message"], "model": CLAUDE}}


def test_messages_claude_code_shape_to_openai(stack: tuple[GatewayHarness, str], fakes: Fakes) -> None:
    """What Claude Code sends for a non-Claude model: x-api-key, ?beta=true, beta headers, adaptive
    thinking, max_tokens 32000, a system message mid-conversation."""
    fakes.reset()
    harness, key = stack
    body = {
        "model": "gpt-4o-mini", "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code."},
                   {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                     {"role": "system", "content": "The user is in /tmp."},
                     {"role": "user", "content": "go on"}],
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": []}, "metadata": {"user_id": '{"device_id": "d"}'},
        "tools": [WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
    }
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}
    with httpx.stream("POST", harness.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=20) as r:
        assert r.status_code == 200
        text = r.read().decode()
    assert text.startswith("event: message_start") and text.rstrip().endswith('"type":"message_stop"}')
    sent = fakes.openai.requests[-1]["body"]
    assert sent["max_tokens"] == 16384  # gpt-4o-mini's output limit (from the config here)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system", "user"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]  # the server tool is dropped
    assert "context_management" not in sent


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_count_tokens(claude: "anthropic.Anthropic", fakes: Fakes, model: str) -> None:
    messages = [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    count = claude.messages.count_tokens(model=model, messages=messages, system="Be brief.")
    if model == CLAUDE:  # exact, from Anthropic's own endpoint
        counted = {"system": "Be brief.", "messages": messages, "tools": None}
        assert count.input_tokens == len(json.dumps(counted).split())
        assert fakes.anthropic.requests[-1]["path"] == "count_tokens"
    else:
        assert 5 <= count.input_tokens <= 60


def test_count_tokens_never_404s(claude: "anthropic.Anthropic") -> None:
    count = claude.messages.count_tokens(model="someone/unknown-model", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0


def test_messages_errors(claude: "anthropic.Anthropic", stack: tuple[GatewayHarness, str]) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        claude.messages.create(model="nobody/nothing-here", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert not_found.value.body["type"] == "error"
    assert not_found.value.body["error"]["type"] == "not_found_error"
    assert not_found.value.body["error_type"] == "model_not_found"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=GPT, max_tokens=0, messages=[{"role": "user", "content": "x"}])
    bad_key = anthropic.Anthropic(base_url=stack[0].url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        bad_key.messages.create(model=GPT, max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["error_type"] == "authentication_required"
    bearer = anthropic.Anthropic(base_url=stack[0].url, auth_token=stack[1], max_retries=0)  # ANTHROPIC_AUTH_TOKEN
    assert bearer.messages.create(model=GPT, max_tokens=10, messages=[{"role": "user", "content": "x"}]).content


def fail_mid_stream(fakes: Fakes) -> None:
    fakes.openai.failures = ["midstream_error"]
    fakes.anthropic.failures = ["midstream_error"]
    fakes.gemini.failures = ["cut"]  # text, then the stream ends without a finish


@pytest.mark.parametrize("model", MODELS)
def test_messages_mid_stream_failure_is_an_error_event(claude: "anthropic.Anthropic", fakes: Fakes,
                                                       model: str) -> None:
    fail_mid_stream(fakes)
    received = []
    with pytest.raises(anthropic.APIStatusError):
        with claude.messages.stream(model=model, max_tokens=100,
                                    messages=[{"role": "user", "content": "Hello"}]) as stream:
            for event in stream:
                received.append(event.type)
    assert received and received[0] == "message_start"


# ------------------------------------------------------------------------------ OpenAI Responses


@pytest.mark.parametrize("model", MODELS)
def test_responses_create(oai: openai.OpenAI, fakes: Fakes, model: str) -> None:
    response = oai.responses.create(model=model, instructions="Be brief.", input="Hello")
    assert response.status == "completed"
    assert response.output_text == expected_text(model, fakes)
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_responses_stream(oai: openai.OpenAI, fakes: Fakes, model: str) -> None:
    events = list(oai.responses.create(model=model, input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}], stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for name in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert name in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))  # from 0, as OpenAI counts
    responses_grammar.check([e.model_dump(mode="json") for e in events])
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected_text(model, fakes) == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens > 0


CODEX_TOOLS = [
    {"type": "function", "name": "get_weather", "strict": False, "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
        {"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}]},
    {"type": "web_search", "external_web_access": False},
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_call_round_trip(oai: openai.OpenAI, fakes: Fakes, model: str, stream: bool) -> None:
    fakes.answer_with_tool(model, "call_abc")
    kwargs: dict[str, Any] = {"model": model, "input": "Weather in Paris?", "tools": CODEX_TOOLS,
                              "tool_choice": "auto", "parallel_tool_calls": True, "store": False,
                              "include": ["reasoning.encrypted_content"], "prompt_cache_key": "s1",
                              "extra_body": {"client_metadata": {"x": "y"}}}
    if stream:
        events = list(oai.responses.create(stream=True, **kwargs))
        assert "response.function_call_arguments.delta" in [e.type for e in events]
        assert "response.function_call_arguments.done" in [e.type for e in events]
        response = events[-1].response
    else:
        response = oai.responses.create(**kwargs)
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    sent = fakes.last_body(model)
    sent_text = json.dumps(sent)
    assert "multi_agent_v1__spawn" in sent_text and "web_search" not in sent_text
    fakes.reset()
    second = oai.responses.create(model=model, tools=CODEX_TOOLS, input=[
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ])
    assert second.output_text == expected_text(model, fakes)
    assert "Sunny, 21 C" in json.dumps(fakes.last_body(model))


def test_responses_namespace_call_maps_back(oai: openai.OpenAI, fakes: Fakes) -> None:
    fakes.openai.tool_calls = [{"id": "call_ns", "name": "multi_agent_v1__spawn", "arguments": "{}"}]
    response = oai.responses.create(model=GPT, input="spawn one", tools=CODEX_TOOLS)
    call = response.output[0]
    assert call.type == "function_call" and call.name == "spawn" and call.namespace == "multi_agent_v1"


def test_responses_refusals(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:  # an id never stored (tests/test_responses_stored.py)
        oai.responses.create(model=GPT, input="hi", previous_response_id="resp_123")
    assert "resp_123" in str(refused.value)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="nobody/nothing-here", input="hi")


@pytest.mark.parametrize("model", MODELS)
def test_responses_mid_stream_failure_is_response_failed(oai: openai.OpenAI, fakes: Fakes, model: str) -> None:
    fail_mid_stream(fakes)
    events = list(oai.responses.create(model=model, input="Hello", stream=True))
    assert "response.output_text.delta" in [e.type for e in events]
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))  # from 0, as OpenAI counts


# ------------------------------------------------------------------------------ thinking / reasoning


def test_messages_thinking_blocks(claude: "anthropic.Anthropic", fakes: Fakes) -> None:
    """The upstream's reasoning comes back as thinking blocks (Gemini's thought summary here)."""
    fakes.gemini.thoughts = "Considering the greeting."
    kwargs: dict[str, Any] = {"model": GEMINI, "max_tokens": 2000, "messages": [{"role": "user", "content": "Hi"}],
                              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    message = claude.messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Considering the greeting."
    fakes.gemini.thoughts = "Considering the greeting."
    with claude.messages.stream(**kwargs) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas[0] == "thinking_delta" and "text_delta" in deltas
    assert final.content[0].type == "thinking" and final.content[1].text == fakes.gemini.reply


def test_responses_reasoning_item(oai: openai.OpenAI, fakes: Fakes) -> None:
    fakes.gemini.thoughts = "Considering the greeting."
    response = oai.responses.create(model=GEMINI, input="Hi", reasoning={"effort": "low", "summary": "auto"},
                                    include=["reasoning.encrypted_content"])
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Considering the greeting."
    fakes.gemini.thoughts = "Considering the greeting."
    events = list(oai.responses.create(model=GEMINI, input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    responses_grammar.check([e.model_dump(mode="json") for e in events])
    items = events[-1].response.output
    assert [item.type for item in items] == ["reasoning", "message"]


def test_reasoning_details_survive_a_responses_round_trip() -> None:
    """Signed Anthropic thinking travels through Codex as encrypted_content and comes back unchanged."""
    from api.formats.openai_responses import ResponsesRequest, canonical_request, response_from_completion

    details = [{"type": "reasoning.text", "text": "hmm", "signature": "sig-1", "format": "anthropic-claude-v1",
                "index": 0}]
    completion = {"id": "chatcmpl-x", "model": CLAUDE, "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "reasoning_details": details,
        "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    output = response_from_completion(completion)["output"]
    assert output[0]["type"] == "reasoning" and output[0]["encrypted_content"]
    request = ResponsesRequest(model=CLAUDE, input=[{"type": "message", "role": "user", "content": "go"}, *output,
                                                    {"type": "function_call_output", "call_id": "toolu_1",
                                                     "output": "ok"}])
    assistant = canonical_request(request)["messages"][1]
    assert assistant["reasoning_details"] == details
    assert assistant["tool_calls"][0]["id"] == "toolu_1"
