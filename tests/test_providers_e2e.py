"""Anthropic and Gemini end to end, as a new user meets them: the OpenAI SDK → gateway → native upstream.

``ANTHROPIC_BASE_URL``/``GEMINI_BASE_URL`` point at the fake upstreams (real local HTTP servers speaking each
provider's wire format, strict where translations usually go wrong); the gateway runs both pools.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.gemini_server import GeminiFakeState, create_gemini_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, config_file, env_for, reassemble

CLAUDE = "anthropic/claude-3-5-haiku-latest"
GEMINI = "google/gemini-2.5-flash"
PASS_THROUGH = "anthropic/claude-test"  # not in the catalog: routed by its provider prefix

# The models called here are made free (tests/harness.py config_file: limits no test reaches), so access control
# lets anonymous tests in; the pass-through id is routed to Anthropic by this entry.
PASS_THROUGH_ENTRY = f"""
[[models]]
id = "{PASS_THROUGH}"
provider = "anthropic"
upstream_id = "claude-test"
free = true
"""

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[tuple[AnthropicFakeState, str]]:
    state = AnthropicFakeState(api_key="sk-ant-test")
    with ThreadedServer(create_anthropic_app(state)) as server:
        yield state, server.url


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[tuple[GeminiFakeState, str]]:
    state = GeminiFakeState(api_key="test-gemini-key")
    with ThreadedServer(create_gemini_app(state)) as server:
        yield state, server.url


@pytest.fixture
def fake_anthropic(anthropic_server: tuple[AnthropicFakeState, str]) -> tuple[AnthropicFakeState, str]:
    """The module's fake, reset to its defaults: one gateway serves the module, each test starts clean."""
    anthropic_server[0].__dict__.update(vars(AnthropicFakeState(api_key="sk-ant-test")))
    return anthropic_server


@pytest.fixture
def fake_gemini(gemini_server: tuple[GeminiFakeState, str]) -> tuple[GeminiFakeState, str]:
    gemini_server[0].__dict__.update(vars(GeminiFakeState(api_key="test-gemini-key")))
    return gemini_server


@pytest.fixture(scope="module")
def native_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
                   anthropic_server: tuple[AnthropicFakeState, str],
                   gemini_server: tuple[GeminiFakeState, str]) -> Iterator[GatewayHarness]:
    config = config_file(tmp_path_factory.mktemp("providers"), CLAUDE, GEMINI, text=PASS_THROUGH_ENTRY)
    env = env_for(redis_url, MEGABRAIN_CONFIG=config,
                  ANTHROPIC_BASE_URL=anthropic_server[1], ANTHROPIC_API_KEY="sk-ant-test",
                  GEMINI_BASE_URL=gemini_server[1], GEMINI_API_KEY="test-gemini-key",
                  MEGABRAIN_UPSTREAM_MAX_RETRIES="2")
    with GatewayHarness.from_env(env, pools=("anthropic", "google")) as harness:
        yield harness


@pytest.fixture
def sdk(native_gateway: GatewayHarness, fake_anthropic: object, fake_gemini: object) -> openai.OpenAI:
    """A client of the module's gateway; asking for it resets both fakes."""
    return anonymous_sdk(native_gateway)


def anonymous_sdk(gateway: GatewayHarness) -> openai.OpenAI:
    """The SDK without a key (an empty Authorization header): anonymous use of the free models."""
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=20,
                         default_headers={"Authorization": ""})


# ---------------------------------------------------------------- Anthropic


@pytest.mark.parametrize("model", [CLAUDE, PASS_THROUGH])
def test_anthropic_text_non_streaming(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str],
                                      model: str) -> None:
    state, _ = fake_anthropic
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, max_tokens=300, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == state.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == model
    assert raw.headers["x-megabrain-provider"] == "anthropic"
    assert completion.usage.prompt_tokens == state.input_tokens
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sent = state.requests[-1]
    assert sent["headers"]["x-api-key"] == "sk-ant-test" and sent["headers"]["anthropic-version"]
    assert sent["body"]["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert sent["body"]["model"] == model.split("/", 1)[1]
    assert sent["body"]["max_tokens"] == 300 and sent["body"]["stop_sequences"] == ["END"]
    assert all(m["role"] != "system" for m in sent["body"]["messages"])


def test_anthropic_sends_max_tokens_when_the_client_does_not(sdk: openai.OpenAI,
                                                              fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}])
    # the model's own output limit (models.dev: 8,192 for Claude 3.5 Haiku), not the fixed 4,096 default
    assert state.requests[-1]["body"]["max_tokens"] == 8192


def test_anthropic_streaming_with_usage(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    got = reassemble(sdk.chat.completions.create(
        model=CLAUDE, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]))
    assert got["text"] == state.reply
    assert got["finish"] == "stop" and got["first_role"] == "assistant" and len(got["ids"]) == 1
    assert got["usage"] is not None and got["usage"]["prompt_tokens"] == state.input_tokens
    assert got["usage"]["completion_tokens"] > 0
    assert state.requests[-1]["body"]["stream"] is True
    assert "Be brief." in json.dumps(state.requests[-1]["body"]["system"])


def test_anthropic_streaming_without_usage_sends_none(sdk: openai.OpenAI) -> None:
    got = reassemble(sdk.chat.completions.create(model=CLAUDE, stream=True,
                                               messages=[{"role": "user", "content": "Hi"}]))
    assert got["usage"] is None and got["finish"] == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_calls(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str],
                              stream: bool) -> None:
    state, _ = fake_anthropic
    state.reply = "Checking."
    state.chunk_chars = 3  # many small argument fragments
    state.tool_call = [{"name": "get_weather", "input": {"city": "Paris", "unit": "celsius"}},
                       {"name": "get_time", "input": {"tz": "Europe/Paris"}}]
    kwargs = dict(model=CLAUDE, messages=[{"role": "user", "content": "Weather and time in Paris?"}],
                  tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required")
    if stream:
        got = reassemble(sdk.chat.completions.create(stream=True, **kwargs))
        calls, finish, text = got["calls"], got["finish"], got["text"]
    else:
        choice = sdk.chat.completions.create(**kwargs).choices[0]
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls]
        finish, text = choice.finish_reason, choice.message.content
    assert finish == "tool_calls" and text == "Checking."
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris", "unit": "celsius"},
                                                           {"tz": "Europe/Paris"}]
    assert [c["id"] for c in calls] == ["toolu_fake00", "toolu_fake01"]
    sent = state.requests[-1]["body"]
    assert sent["tool_choice"]["type"] == "any"
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}


def test_anthropic_tool_round_trip(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    """A whole tool conversation in OpenAI shape (ids from another provider, two results) is accepted."""
    state, _ = fake_anthropic
    messages = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call:1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call.2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call:1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call.2", "content": "noon"},
        {"role": "user", "content": "Thanks, summarise."},
    ]
    completion = sdk.chat.completions.create(model=CLAUDE, messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    assert completion.choices[0].message.content == state.reply
    sent = state.requests[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[2]["content"]][:2] == ["tool_result", "tool_result"]


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_529_is_retried(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str],
                                  stream: bool) -> None:
    state, _ = fake_anthropic
    state.retry_after = "0"
    state.failures = [529, 500]
    got = sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}], stream=stream)
    text = reassemble(got)["text"] if stream else got.choices[0].message.content
    assert text == state.reply
    assert len(state.requests) == 3


def test_anthropic_midstream_error_ends_the_stream(sdk: openai.OpenAI,
                                                   fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    state.failures = ["midstream_error"]
    received = ""
    with pytest.raises(openai.APIError) as err:
        for chunk in sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True):
            received += "".join(c.delta.content or "" for c in chunk.choices)
    assert received and state.reply.startswith(received) and received != state.reply
    assert "overload" in str(err.value).lower()
    assert len(state.requests) == 1  # not restarted after text reached the client


def test_anthropic_cut_stream_is_an_error(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    state.failures = ["cut"]
    with pytest.raises(openai.APIError):
        reassemble(sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}],
                                             stream=True))
    assert len(state.requests) == 1


def test_anthropic_400_is_not_retried(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    state.failures = [400]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.response.json()["error_type"] == "invalid_request"
    assert len(state.requests) == 1


def test_anthropic_rejected_key_is_a_gateway_error_not_the_clients(
        sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    state.api_key = "sk-ant-other"
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 502
    assert len(state.requests) == 1


# ---------------------------------------------------------------- Gemini


def test_gemini_text_non_streaming(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    raw = sdk.chat.completions.with_raw_response.create(
        model=GEMINI, max_tokens=200, temperature=0.3, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == state.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == GEMINI and raw.headers["x-megabrain-provider"] == "google"
    assert completion.usage.completion_tokens == len(state.reply.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sent = state.requests[-1]
    assert sent["key_ok"] and sent["model"] == "gemini-2.5-flash" and sent["method"] == "generateContent"
    assert sent["body"]["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert [c["role"] for c in sent["body"]["contents"]] == ["user"]
    config = sent["body"]["generationConfig"]
    assert config["maxOutputTokens"] == 200 and config["temperature"] == 0.3 and config["stopSequences"] == ["END"]


def test_gemini_streaming_with_usage(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    state.repeat_stop = True  # older models put finishReason on every chunk: still one finish
    got = reassemble(sdk.chat.completions.create(model=GEMINI, stream=True, stream_options={"include_usage": True},
                                               messages=[{"role": "user", "content": "Hi"}]))
    assert got["text"] == state.reply
    assert got["finish"] == "stop" and got["first_role"] == "assistant" and len(got["ids"]) == 1
    assert got["usage"] is not None and got["usage"]["completion_tokens"] == len(state.reply.split())
    assert state.requests[-1]["method"] == "streamGenerateContent" and state.requests[-1]["query"]["alt"] == "sse"


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_tool_calls(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str], stream: bool) -> None:
    state, _ = fake_gemini
    state.function_call = {"name": "get_weather", "args": {"city": "Paris"}}
    kwargs = dict(model=GEMINI, messages=[{"role": "user", "content": "Weather in Paris?"}],
                  tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if stream:
        got = reassemble(sdk.chat.completions.create(stream=True, **kwargs))
        calls, finish = got["calls"], got["finish"]
    else:
        choice = sdk.chat.completions.create(**kwargs).choices[0]
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls]
        finish = choice.finish_reason
    assert finish == "tool_calls"
    assert [c["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"]
    sent = state.requests[-1]["body"]
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert "additionalProperties" not in json.dumps(sent["tools"])
    assert sent["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == ["get_weather"]


def test_gemini_tool_round_trip(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 18}'},
    ]
    completion = sdk.chat.completions.create(model=GEMINI, messages=messages, tools=[WEATHER_TOOL])
    assert completion.choices[0].message.content == state.reply
    contents = state.requests[-1]["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[2]["parts"][0]["functionResponse"]["name"] == "get_weather"


def test_gemini_429_resource_exhausted_is_retried(sdk: openai.OpenAI,
                                                  fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    state.retry_delay = "0s"
    state.failures = [429, 503]
    completion = sdk.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content == state.reply
    assert len(state.requests) == 3


def test_gemini_reset_is_retried(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    state.failures = ["reset"]
    got = reassemble(sdk.chat.completions.create(model=GEMINI, stream=True, messages=[{"role": "user", "content": "Hi"}]))
    assert got["text"] == state.reply
    assert len(state.requests) == 2


def test_gemini_bad_key_is_not_retried(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    state.failures = ["api_key_invalid"]
    with pytest.raises(openai.APIStatusError) as err:
        sdk.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 502  # the gateway's key, not the client's
    assert len(state.requests) == 1


def test_gemini_cut_stream_is_an_error(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    state.failures = ["cut"]
    with pytest.raises(openai.APIError):
        reassemble(sdk.chat.completions.create(model=GEMINI, stream=True, messages=[{"role": "user", "content": "Hi"}]))
    assert len(state.requests) == 1


# ---------------------------------------------------------------- content shapes


PIXEL = ("data:image/png;base64,"
         "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
IMAGE_MESSAGES = [{"role": "user", "content": [
    {"type": "text", "text": "What is in these pictures?"},
    {"type": "image_url", "image_url": {"url": PIXEL}},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
]}]


def test_anthropic_images(sdk: openai.OpenAI, fake_anthropic: tuple[AnthropicFakeState, str]) -> None:
    state, _ = fake_anthropic
    sdk.chat.completions.create(model=CLAUDE, messages=IMAGE_MESSAGES)
    blocks = state.requests[-1]["body"]["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["text", "image", "image"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PIXEL.split(",", 1)[1]}
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}


def test_gemini_images_and_json_schema(sdk: openai.OpenAI, fake_gemini: tuple[GeminiFakeState, str]) -> None:
    state, _ = fake_gemini
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"],
              "additionalProperties": False}
    sdk.chat.completions.create(model=GEMINI, messages=IMAGE_MESSAGES, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    body = state.requests[-1]["body"]
    parts = body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PIXEL.split(",", 1)[1]}}
    assert parts[2] == {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"]["properties"] == {"animal": {"type": "string"}}
    assert "additionalProperties" not in config["responseSchema"]
