"""Gemini's own API through the gateway, with Google's official ``google-genai`` SDK as the client:
``generate_content``, streaming, ``count_tokens``, a function-calling loop by hand, model listing,
Google's error shape and key placement; on a Gemini model (the request goes natively, to the strict
scripted Gemini fake) and on OpenAI and Claude models (translated, to the OpenAI and Anthropic fakes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fakes.agent_gemini import create_app as gemini_agent_app
from tests.fakes.agent_script import FINAL_TEXT, AgentSession, AgentTask
from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, create_key, env_for


GEMINI = "google/gemini-2.5-flash"
GEMINI3 = "google/gemini-3-flash-preview"
GPT = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-sonnet-4-5"
WRITE_FILE = types.FunctionDeclaration(
    name="write_file", description="Write a file",
    parameters_json_schema={"type": "object", "properties": {"file_path": {"type": "string"},
                                                             "content": {"type": "string"}},
                            "required": ["file_path", "content"]})


class Fakes:
    def __init__(self, tmp: Path) -> None:
        self.gemini = AgentSession(AgentTask(str(tmp / "hello.txt"), "hi there"), call_prefix="gem_call")
        self.openai = OpenAIFakeState()
        self.anthropic = AnthropicFakeState(api_key="sk-ant-test")

    def reset(self, tmp: Path) -> None:
        self.gemini.reset(AgentTask(str(tmp / "hello.txt"), "hi there"))
        self.openai.reset()
        self.anthropic.__dict__.update(vars(AnthropicFakeState(api_key="sk-ant-test")))


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayHarness, str, Fakes]]:
    fakes = Fakes(tmp_path_factory.mktemp("gemini-api"))
    with ThreadedServer(gemini_agent_app(fakes.gemini)) as ge, ThreadedServer(create_openai_app(fakes.openai)) as oa, \
            ThreadedServer(create_anthropic_app(fakes.anthropic)) as an:
        env = env_for(redis_url, GEMINI_BASE_URL=ge.url, GEMINI_API_KEY="test-gemini-key",
                      OPENAI_BASE_URL=oa.url + "/v1", OPENAI_API_KEY="sk-upstream-test",
                      ANTHROPIC_BASE_URL=an.url, ANTHROPIC_API_KEY="sk-ant-test",
                      MEGABRAIN_UPSTREAM_MAX_RETRIES="0")
        key = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "gemini-api")
        with GatewayHarness.from_env(env, pools=("openai", "anthropic", "google")) as harness:
            yield harness, key, fakes


@pytest.fixture
def fakes(stack: tuple[GatewayHarness, str, Fakes], tmp_path: Path) -> Fakes:
    stack[2].reset(tmp_path)
    return stack[2]


@pytest.fixture
def client(stack: tuple[GatewayHarness, str, Fakes], fakes: Fakes) -> "genai.Client":
    harness, key, _ = stack
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=harness.url, timeout=20_000))


def gemini_sent(fakes: Fakes, n: int = -1) -> tuple[str, str, dict[str, Any]]:
    """(upstream model, method, body) of a request the Gemini fake received."""
    request = fakes.gemini.requests[n]
    model, _, method = request["path"].removeprefix("/v1beta/models/").rpartition(":")
    return model, method, request["body"]


def _openai_text(fakes: Fakes) -> str:
    return "".join(f"tok{i} " for i in range(fakes.openai.tokens))


def expected_text(model: str, fakes: Fakes) -> str:
    return {GPT: _openai_text(fakes), CLAUDE: fakes.anthropic.reply}.get(model, "OK.")


# ---------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("model", [GEMINI, GPT, CLAUDE])
def test_generate_content(client: "genai.Client", fakes: Fakes, model: str) -> None:
    response = client.models.generate_content(
        model=model, contents="Hello",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.3, max_output_tokens=300))
    assert response.text == expected_text(model, fakes)
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0
    assert usage.total_token_count >= usage.prompt_token_count + usage.candidates_token_count
    assert float(response.sdk_http_response.headers["x-megabrain-cost"]) > 0  # billed, on both paths
    if model == GEMINI:  # natively: the client's body, at the upstream's model id
        upstream_model, method, sent = gemini_sent(fakes)
        assert upstream_model == "gemini-2.5-flash" and method == "generateContent"
        assert sent["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert sent["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 300}
    elif model == GPT:
        sent = fakes.openai.requests[-1]["body"]
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["temperature"] == 0.3 and sent["max_tokens"] == 300


@pytest.mark.parametrize("model", [GEMINI, GPT, CLAUDE])
def test_generate_content_stream(client: "genai.Client", fakes: Fakes, model: str) -> None:
    chunks = list(client.models.generate_content_stream(model=model, contents="Hello"))
    assert "".join(c.text or "" for c in chunks) == expected_text(model, fakes)
    assert len([c for c in chunks if c.text]) >= 2  # text arrives as it comes, not in one piece
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.candidates_token_count > 0
    if model == GEMINI:
        assert gemini_sent(fakes)[1] == "streamGenerateContent"


def test_model_version_names_the_serving_model(client: "genai.Client", fakes: Fakes) -> None:
    response = client.models.generate_content(model="gpt-4o-mini", contents="Hello")
    assert response.model_version == GPT
    assert response.sdk_http_response.headers["x-megabrain-provider"] == "openai"


@pytest.mark.parametrize("model", [GEMINI, GPT])
def test_count_tokens(client: "genai.Client", fakes: Fakes, model: str) -> None:
    contents = "Count these words, please, all of them." * 10
    counted = client.models.count_tokens(model=model, contents=contents)
    assert counted.total_tokens > 10
    if model == GEMINI:  # Gemini's own count, of the client's own body
        _, method, sent = gemini_sent(fakes)
        assert method == "countTokens" and sent["contents"][0]["parts"][0]["text"] == contents
    else:
        assert not fakes.openai.requests  # estimated here: OpenAI has no count endpoint


# ------------------------------------------------------------------------------------ function calling


def _run_tool(call: types.FunctionCall) -> dict[str, Any]:
    assert call.name == "write_file"
    Path(call.args["file_path"]).write_text(call.args["content"])
    return {"output": f"Wrote {call.args['file_path']}"}


def _script_tool_call(fakes: Fakes, model: str, task: AgentTask) -> None:
    """The translated fakes answer with a call while told to (the Gemini fake decides by itself)."""
    if model == GPT:
        fakes.openai.tool_calls = [{"id": "call_w1", "name": "write_file",
                                    "arguments": json.dumps({"file_path": task.path, "content": task.content})}]
    elif model == CLAUDE:
        fakes.anthropic.tool_call = {"id": "toolu_w1", "name": "write_file",
                                     "input": {"file_path": task.path, "content": task.content}}


def _stop_tool_calls(fakes: Fakes) -> None:
    fakes.openai.tool_calls = None
    fakes.anthropic.tool_call = None


@pytest.mark.parametrize("include_thoughts", [True, False], ids=["thoughts", "no-thoughts"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", [GEMINI3, GPT, CLAUDE])
def test_function_calling_loop(client: "genai.Client", fakes: Fakes, model: str, stream: bool,
                               include_thoughts: bool) -> None:
    """By hand, as Google's docs show it: send tools, run the call, append the model's content as it came
    (signatures included) and the function response, ask again. The Gemini 3 fake refuses a call turn
    whose signature is missing or altered; the Claude fake one whose signed thinking block is missing."""
    task = fakes.gemini.task
    _script_tool_call(fakes, model, task)
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WRITE_FILE])],
        thinking_config=types.ThinkingConfig(include_thoughts=include_thoughts, thinking_budget=2048))
    contents: list[types.Content] = [types.Content(role="user", parts=[types.Part(text=task.prompt())])]

    def generate() -> types.Content:
        if not stream:
            return client.models.generate_content(model=model, contents=contents, config=config).candidates[0].content
        parts: list[types.Part] = []
        for chunk in client.models.generate_content_stream(model=model, contents=contents, config=config):
            parts.extend(chunk.candidates[0].content.parts or [] if chunk.candidates and chunk.candidates[0].content else [])
        return types.Content(role="model", parts=parts)

    first = generate()
    calls = [p.function_call for p in first.parts if p.function_call]
    assert len(calls) == 1, first
    if model != GPT:
        assert any(p.thought_signature for p in first.parts), "a thinking model's call carries a signature"
    if model == CLAUDE:  # Gemini's rule: thought text only when asked for (the signature always)
        assert any(p.thought for p in first.parts) is include_thoughts
    result = _run_tool(calls[0])
    assert Path(task.path).read_text() == "hi there"
    _stop_tool_calls(fakes)
    contents += [first, types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        id=calls[0].id, name=calls[0].name, response=result))])]
    second = generate()
    text = "".join(p.text or "" for p in second.parts if not p.thought)
    assert text == {GEMINI3: FINAL_TEXT}.get(model, expected_text(model, fakes))
    if model == GEMINI3:
        assert fakes.gemini.completed, fakes.gemini.explain()
    elif model == GPT:
        sent = fakes.openai.requests[-1]["body"]["messages"]
        assert sent[-1] == {"role": "tool", "tool_call_id": calls[0].id, "content": result["output"]}
        assert sent[-2]["tool_calls"][0]["id"] == calls[0].id
    else:  # Claude: its signed thinking came back through our signature, and Anthropic's fake checked it
        sent = fakes.anthropic.requests[-1]["body"]["messages"]
        assert sent[1]["content"][0]["type"] == "thinking" and sent[1]["content"][0]["signature"]
        assert sent[2]["content"][0] == {"type": "tool_result", "tool_use_id": calls[0].id,
                                         "content": result["output"]}


def test_native_request_keeps_what_only_gemini_reads(client: "genai.Client", fakes: Fakes) -> None:
    """To a Gemini upstream the client's body goes as it came: fields no other provider has stay."""
    config = types.GenerateContentConfig(safety_settings=[types.SafetySetting(
        category=types.HarmCategory.HARM_CATEGORY_HARASSMENT, threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH)])
    client.models.generate_content(model=GEMINI, contents="Hello", config=config)
    assert gemini_sent(fakes)[2]["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    assert client.models.generate_content(model=GPT, contents="Hello", config=config).text == _openai_text(fakes)


def test_billed_google_tools_are_refused(client: "genai.Client", fakes: Fakes) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=GEMINI, contents="News?", config=types.GenerateContentConfig(
            tools=[types.Tool(google_search=types.GoogleSearch())]))
    assert caught.value.code == 400 and "Google Search" in caught.value.message
    assert not fakes.gemini.requests


def test_stream_survives_a_slow_first_token(client: "genai.Client", fakes: Fakes) -> None:
    """Past the commit wait the stream opens with a keep-alive: a blank line, which Google's SDKs skip (an
    SSE comment, as on the other routes, breaks both of them)."""
    fakes.openai.latency = 2.5  # MEGABRAIN_STREAM_COMMIT_WAIT is 2 in the tests
    chunks = list(client.models.generate_content_stream(model=GPT, contents="Hello"))
    assert "".join(c.text or "" for c in chunks) == _openai_text(fakes)


def test_stream_failure_after_first_chunk_raises_in_the_sdk(client: "genai.Client", fakes: Fakes) -> None:
    fakes.openai.failures = ["midstream_error"]
    received: list[str] = []
    with pytest.raises(genai_errors.APIError) as caught:
        for chunk in client.models.generate_content_stream(model=GPT, contents="Hello"):
            received.append(chunk.text or "")
    assert received and caught.value.code >= 500


# ------------------------------------------------------------------------------ keys, paths, errors


def _post(harness: GatewayHarness, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(harness.url + path, json=body if body is not None else {"contents": [{"parts": [{"text": "Hi"}]}]},
                      timeout=20, **kwargs)


def test_key_in_the_query_string_and_never_in_the_logs(stack: tuple[GatewayHarness, str, Fakes], fakes: Fakes,
                                                       capfd: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    harness, key, _ = stack
    caplog.set_level(logging.DEBUG)
    ok = _post(harness, f"/v1beta/models/{GPT}:generateContent?key={key}")
    assert ok.status_code == 200 and ok.json()["candidates"][0]["content"]["parts"][0]["text"] == _openai_text(fakes)
    wrong = "mb-" + "x" * 40
    refused = _post(harness, f"/v1beta/models/{GPT}:streamGenerateContent?alt=sse&key={wrong}")
    assert refused.status_code == 401
    assert refused.json() == {"error": {"code": 401, "message": refused.json()["error"]["message"],
                                        "status": "UNAUTHENTICATED"}, "error_type": "authentication_required"}
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "request finished" in logged
    assert key not in logged and wrong not in logged


def test_no_key_for_a_paid_model(stack: tuple[GatewayHarness, str, Fakes], fakes: Fakes) -> None:
    refused = _post(stack[0], f"/v1beta/models/{GPT}:generateContent")
    assert refused.status_code == 401 and refused.json()["error"]["status"] == "UNAUTHENTICATED"
    assert refused.json()["error_type"] == "paid_model_auth_required"


@pytest.mark.parametrize("path, status, rpc, error_type", [
    ("/v1beta/models/openai/no-such-model:generateContent", 404, "NOT_FOUND", "model_not_found"),
    ("/v1beta/models/gpt%204o:generateContent", 400, "INVALID_ARGUMENT", "invalid_request"),
    ("/v1beta/models/openai/%2E%2E/%2E%2E/admin:generateContent", 400, "INVALID_ARGUMENT", "invalid_request"),
    ("/v1beta/models/" + "a" * 300 + ":generateContent", 400, "INVALID_ARGUMENT", "invalid_request"),
    ("/v1beta/models/gpt-4o-mini:embedContent", 404, "NOT_FOUND", "not_found"),
    ("/v1beta/models/gpt-4o-mini", 404, "NOT_FOUND", "not_found"),
    ("/v1beta/models/gpt-4o-mini:streamGenerateContent", 400, "INVALID_ARGUMENT", "invalid_request"),
])
def test_paths_are_checked_before_anything_else(stack: tuple[GatewayHarness, str, Fakes], fakes: Fakes, path: str,
                                                status: int, rpc: str, error_type: str) -> None:
    harness, key, _ = stack
    response = _post(harness, path, headers={"x-goog-api-key": key})
    assert response.status_code == status, response.text
    assert response.json()["error"]["status"] == rpc and response.json()["error_type"] == error_type
    assert not fakes.openai.requests and not fakes.gemini.requests


def test_slash_of_a_canonical_id_may_be_escaped(stack: tuple[GatewayHarness, str, Fakes], fakes: Fakes) -> None:
    harness, key, _ = stack
    response = _post(harness, "/v1beta/models/openai%2Fgpt-4o-mini:generateContent", headers={"x-goog-api-key": key})
    assert response.status_code == 200 and response.json()["modelVersion"] == GPT


def test_invalid_request_in_googles_shape(client: "genai.Client", fakes: Fakes) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model=GPT, contents=[
            types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
                name="write_file", response={"output": "orphan"}))])])
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "function response turn comes immediately after a function call turn" in caught.value.message
    assert caught.value.details["error_type"] == "invalid_request"


# ------------------------------------------------------------------------------------------- listing


def test_models_list_and_get_with_the_sdk(client: "genai.Client") -> None:
    pager = client.models.list(config={"page_size": 3})
    assert len(pager.page) == 3  # one page of three, then the SDK follows nextPageToken
    names = [m.name for m in pager]
    assert len(names) > 3 and len(set(names)) == len(names)
    assert {"models/openai/gpt-4o-mini", "models/google/gemini-2.5-flash", "models/anthropic/claude-sonnet-4-5"} <= set(names)
    model = client.models.get(model=GPT)
    assert model.name == "models/" + GPT and model.output_token_limit and model.input_token_limit
    assert "generateContent" in model.supported_actions
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.get(model="openai/no-such-model")
    assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"


def test_listing_shape_follows_the_client(stack: tuple[GatewayHarness, str, Fakes]) -> None:
    harness = stack[0]
    gemini = httpx.get(harness.url + "/v1beta/models", params={"pageSize": 2}, timeout=20).json()
    assert len(gemini["models"]) == 2 and gemini["nextPageToken"] == "2"
    assert httpx.get(harness.url + "/v1beta/models/gpt-4o-mini", timeout=20).json()["name"] == "models/gpt-4o-mini"
    openai_shaped = httpx.get(harness.url + "/v1/models", timeout=20).json()
    assert openai_shaped["object"] == "list" and openai_shaped["data"]
    goog = httpx.get(harness.url + "/v1/models", headers={"x-goog-api-client": "google-genai-sdk/3"}, timeout=20).json()
    assert "models" in goog and "data" not in goog


# ------------------------------------------------------------------------------- the SDK's own loops


@pytest.mark.parametrize("model", [GEMINI3, GPT])
def test_chat_with_automatic_function_calling(client: "genai.Client", fakes: Fakes, model: str) -> None:
    """The SDK runs the loop itself (``chats`` with a Python function as the tool): it calls the function,
    sends its result back with the model's turn as it came, and returns the final answer."""
    task = fakes.gemini.task
    _script_tool_call(fakes, model, task)

    def write_file(file_path: str, content: str) -> dict[str, str]:
        """Write a file."""
        Path(file_path).write_text(content)
        _stop_tool_calls(fakes)  # the OpenAI fake answers with a call for as long as it is told to
        return {"output": f"Wrote {file_path}"}

    chat = client.chats.create(model=model, config=types.GenerateContentConfig(tools=[write_file]))
    answer = chat.send_message(task.prompt())
    assert Path(task.path).read_text() == "hi there"
    assert answer.text == {GEMINI3: FINAL_TEXT}.get(model, _openai_text(fakes))
    if model == GEMINI3:
        assert fakes.gemini.completed, fakes.gemini.explain()


async def test_async_stream(client: "genai.Client", fakes: Fakes) -> None:
    """The async client reads streams with its own parser (aiohttp here)."""
    fakes.openai.latency = 2.5  # past the commit wait: the stream opens with a keep-alive line
    text = ""
    async for chunk in await client.aio.models.generate_content_stream(model=GPT, contents="Hello"):
        text += chunk.text or ""
    assert text == _openai_text(fakes)
