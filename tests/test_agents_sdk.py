"""The official SDKs doing the agent's two-turn tool loop by hand, streaming, through the gateway against
the strict scripted fakes (``tests/fakes/agent_*.py``): the model calls ``write_to_file``, the test writes
the file as the tool, sends the result back and reads the final text. Python ``openai`` (Chat
Completions and Responses), Python ``anthropic`` (Messages), Python ``google-genai`` (Gemini's API), the
Node ``openai`` SDK (``tests/node/openai_agent_loop.cjs``) and the Node ``@google/genai`` SDK
(``tests/node/genai_agent_loop.cjs``). Each outcome is a row of README's compatibility table.

The loops send what those clients' users send: ``max_tokens`` on chat (the spelling most clients still
use, also for reasoning models), ``max_output_tokens`` on Responses, and extended thinking to Claude.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests import agent_clients
from tests.agent_stack import CLAUDE, FAMILY, GEMINI, GPT, REASONING, AgentStack
from tests.fakes.agent_script import FINAL_TEXT, AgentTask


SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
          "required": ["path", "content"]}
TURNS = 4


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[AgentStack]:
    with AgentStack(redis_url) as running:
        yield running


@pytest.fixture
def task(stack: AgentStack, tmp_path: Path) -> AgentTask:
    return stack.begin(tmp_path)


def write_to_file(name: str, arguments: dict[str, Any]) -> str:
    """The agent's tool: writes the file the model asked for."""
    assert name == "write_to_file", name
    Path(arguments["path"]).write_text(arguments["content"])
    return f"Wrote {len(arguments['content'])} characters to {arguments['path']}."


def check(stack: AgentStack, model: str, task: AgentTask, final: str) -> None:
    session = stack.session_for(model)
    assert not session.refusals, session.explain()
    assert session.completed and final == FINAL_TEXT, session.explain()
    assert Path(task.path).read_text() == task.content


def row(client: str, package: str, protocol: str, model: str) -> Any:
    return pytest.param(model, marks=pytest.mark.compat(client=client, pypi=package, protocol=protocol,
                                                        family=FAMILY[model]), id=model)


# ------------------------------------------------------------------------------ Python openai: Chat


def chat_loop(client: openai.OpenAI, model: str, task: AgentTask, **extra: Any) -> str:
    tools = [{"type": "function", "function": {"name": "write_to_file", "description": "Write a file",
                                               "parameters": SCHEMA}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt()}]
    for _ in range(TURNS):
        content, calls = "", {}  # tool-call pieces by index, as OpenAI streams them
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=tools, stream=True,
                                                    stream_options={"include_usage": True}, **extra):
            for choice in chunk.choices:
                content += choice.delta.content or ""
                for piece in choice.delta.tool_calls or ():
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = piece.id or call["id"]
                    if piece.function:
                        call["name"] = piece.function.name or call["name"]
                        call["arguments"] += piece.function.arguments or ""
        if not calls:
            return content
        messages.append({"role": "assistant", "content": content or None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()]})
        messages += [{"role": "tool", "tool_call_id": c["id"],
                      "content": write_to_file(c["name"], json.loads(c["arguments"]))} for c in calls.values()]
    raise AssertionError(f"no final answer after {TURNS} turns")


@pytest.mark.parametrize("model", [row("OpenAI Python SDK", "openai", "OpenAI Chat Completions", m)
                                   for m in (GPT, REASONING, CLAUDE, GEMINI)])
def test_python_openai_chat_loop(stack: AgentStack, task: AgentTask, model: str) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    check(stack, model, task, chat_loop(client, model, task, max_tokens=2000))


# ------------------------------------------------------------------------------ Python openai: Responses


def responses_loop(client: openai.OpenAI, model: str, task: AgentTask, **extra: Any) -> str:
    tools = [{"type": "function", "name": "write_to_file", "description": "Write a file", "parameters": SCHEMA,
              "strict": False}]
    items: list[Any] = [{"role": "user", "content": task.prompt()}]
    for _ in range(TURNS):
        with client.responses.stream(model=model, input=items, tools=tools, **extra) as stream:
            response = stream.get_final_response()
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            return response.output_text
        items += [item.model_dump(exclude_none=True) for item in response.output]  # reasoning items too
        items += [{"type": "function_call_output", "call_id": c.call_id,
                   "output": write_to_file(c.name, json.loads(c.arguments))} for c in calls]
    raise AssertionError(f"no final answer after {TURNS} turns")


@pytest.mark.parametrize("model", [row("OpenAI Python SDK", "openai", "OpenAI Responses", m)
                                   for m in (GPT, REASONING, CLAUDE, GEMINI)])
def test_python_openai_responses_loop(stack: AgentStack, task: AgentTask, model: str) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.key, max_retries=0, timeout=60)
    extra: dict[str, Any] = {"max_output_tokens": 4000}
    if model != GPT:
        extra["reasoning"] = {"effort": "low", "summary": "auto"}
    check(stack, model, task, responses_loop(client, model, task, **extra))


# ------------------------------------------------------------------------------ Python anthropic: Messages


def messages_loop(client: "anthropic.Anthropic", model: str, task: AgentTask, **extra: Any) -> str:
    tools = [{"name": "write_to_file", "description": "Write a file", "input_schema": SCHEMA}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt()}]
    for _ in range(TURNS):
        with client.messages.stream(model=model, messages=messages, tools=tools, **extra) as stream:
            message = stream.get_final_message()
        uses = [block for block in message.content if block.type == "tool_use"]
        if not uses:
            return "".join(block.text for block in message.content if block.type == "text")
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": write_to_file(u.name, dict(u.input))}
            for u in uses]})
    raise AssertionError(f"no final answer after {TURNS} turns")


@pytest.mark.parametrize("model", [row("Anthropic Python SDK", "anthropic", "Anthropic Messages", m)
                                   for m in (CLAUDE, GPT, REASONING, GEMINI)])
def test_python_anthropic_messages_loop(stack: AgentStack, task: AgentTask, model: str) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.key, max_retries=0, timeout=60)
    extra: dict[str, Any] = {"max_tokens": 4096}
    if model == CLAUDE:
        extra["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    check(stack, model, task, messages_loop(client, model, task, **extra))
    if model == CLAUDE:  # native, thinking on: the replayed turn kept its signed thinking block
        replay = stack.anthropic.requests[-1]["body"]["messages"][1]["content"]
        assert replay[0]["type"] == "thinking" and replay[0]["signature"]


# ------------------------------------------------------------------------------ Python google-genai: Gemini's API


def gemini_loop(client: Any, model: str, task: AgentTask, config: Any) -> str:
    """As Google's docs show it: append the model's content as it came (thought signatures included) and a
    ``function_response`` part per call, then ask again."""
    from google.genai import types

    contents: list[Any] = [types.Content(role="user", parts=[types.Part(text=task.prompt())])]
    for _ in range(TURNS):
        parts: list[Any] = []
        for chunk in client.models.generate_content_stream(model=model, contents=contents, config=config):
            if chunk.candidates and chunk.candidates[0].content:
                parts += chunk.candidates[0].content.parts or []
        calls = [p.function_call for p in parts if p.function_call]
        if not calls:
            return "".join(p.text or "" for p in parts if not p.thought)
        contents.append(types.Content(role="model", parts=parts))
        contents.append(types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            id=c.id, name=c.name, response={"output": write_to_file(c.name, dict(c.args))})) for c in calls]))
    raise AssertionError(f"no final answer after {TURNS} turns")


@pytest.mark.parametrize("model", [row("Google GenAI Python SDK", "google-genai", "Gemini API", m)
                                   for m in (GEMINI, GPT, REASONING, CLAUDE)])
def test_python_genai_loop(stack: AgentStack, task: AgentTask, model: str) -> None:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=stack.key, http_options=types.HttpOptions(base_url=stack.url, timeout=60_000))
    config = types.GenerateContentConfig(
        max_output_tokens=4000,
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
            name="write_to_file", description="Write a file", parameters_json_schema=SCHEMA)])])
    if model in (CLAUDE, REASONING):
        config.thinking_config = types.ThinkingConfig(thinking_budget=1024, include_thoughts=True)
    check(stack, model, task, gemini_loop(client, model, task, config))
    if model == CLAUDE:  # its signed thinking went out in our thought signature and came back intact
        replay = stack.anthropic.requests[-1]["body"]["messages"][1]["content"]
        assert replay[0]["type"] == "thinking" and replay[0]["signature"]


# ------------------------------------------------------------------------------ Node openai


@pytest.mark.parametrize("api,protocol,model", [
    pytest.param(api, protocol, model, id=f"{api}-{model}", marks=pytest.mark.compat(
        client="OpenAI Node SDK", npm="openai", protocol=protocol, family=FAMILY[model]))
    for api, protocol in (("chat", "OpenAI Chat Completions"), ("responses", "OpenAI Responses"))
    for model in (GPT, REASONING, GEMINI)])
def test_node_openai_loop(stack: AgentStack, task: AgentTask, api: str, protocol: str, model: str) -> None:
    extra = {"max_tokens": 2000} if api == "chat" else {"max_output_tokens": 4000}
    payload = {"baseURL": stack.url + "/v1", "apiKey": stack.key, "model": model, "api": api,
               "prompt": task.prompt(), "extra": extra}
    done = agent_clients.run_node("openai_agent_loop.cjs", json.dumps(payload), package="openai")
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-1500:],
                                                            stack.session_for(model).explain())
    assert result["calls"] == 1
    check(stack, model, task, result["final"])


# ------------------------------------------------------------------------------ Node @google/genai


@pytest.mark.parametrize("model", [
    pytest.param(m, id=m, marks=pytest.mark.compat(client="Google GenAI Node SDK", npm="@google/genai",
                                                   protocol="Gemini API", family=FAMILY[m]))
    for m in (GEMINI, GPT, REASONING, CLAUDE)])
def test_node_genai_loop(stack: AgentStack, task: AgentTask, model: str) -> None:
    config: dict[str, Any] = {"maxOutputTokens": 4000}
    if model in (CLAUDE, REASONING):
        config["thinkingConfig"] = {"thinkingBudget": 1024, "includeThoughts": True}
    payload = {"baseUrl": stack.url, "apiKey": stack.key, "model": model, "prompt": task.prompt(), "config": config}
    done = agent_clients.run_node("genai_agent_loop.cjs", json.dumps(payload), package="@google/genai")
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-1500:],
                                                            stack.session_for(model).explain())
    assert result["calls"] == 1
    check(stack, model, task, result["final"])
