"""The scripted agent fakes refuse what their providers refuse, with the providers' words, and play the
two-turn session when the request is right: checked here directly, without the gateway, so a lenient
fake cannot make the conformance tests pass by accident."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import agent_anthropic, agent_openai
from tests.fakes.agent_script import FINAL_TEXT, AgentSession, AgentTask, serve, sign
from tests.harness import reassemble, sse_events

TASK = AgentTask(path="/tmp/never-written/hello.txt", content="hi")
WRITE = {"type": "function", "function": {"name": "write_to_file", "parameters": {"type": "object"}}}
CLAUDE_WRITE = {"name": "write_to_file", "input_schema": {"type": "object"}}
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[tuple[AgentSession, str]]:
    session = AgentSession(TASK)
    with serve(agent_openai.create_app(session)) as url:
        yield session, url + "/v1/chat/completions"


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[tuple[AgentSession, str]]:
    session = AgentSession(TASK, call_prefix="toolu_mb")
    with serve(agent_anthropic.create_app(session)) as url:
        yield session, url + "/v1/messages"


# ------------------------------------------------------------------------------ OpenAI chat


def chat_turns(model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    first = {"model": model, "messages": [{"role": "user", "content": TASK.prompt()}], "tools": [WRITE]}
    call = {"id": "call_mb_1", "type": "function", "function": {"name": "write_to_file", "arguments": "{}"}}
    second = copy.deepcopy(first)
    second["messages"] += [{"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "call_mb_1", "content": "written"}]
    return first, second


@pytest.mark.parametrize("stream", [False, True])
def test_openai_fake_plays_the_session(openai_fake: tuple[AgentSession, str], stream: bool) -> None:
    session, url = openai_fake
    session.reset(TASK)
    first, second = chat_turns("gpt-5-mini")
    answer = httpx.post(url, json={**first, "stream": stream, "max_completion_tokens": 500}, timeout=10)
    assert answer.status_code == 200 and session.calls == {"call_mb_1": "write_to_file"}
    if stream:
        arguments = reassemble(data for _, data in sse_events(answer.text))["calls"][0]["arguments"]
    else:
        arguments = answer.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"path": TASK.path, "content": TASK.content}
    final = httpx.post(url, json={**second, "stream": stream}, timeout=10)
    assert final.status_code == 200 and session.completed and session.results == {"call_mb_1": "written"}
    assert FINAL_TEXT.split()[0] in final.text and not session.refusals


def _set(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.update(fields)


OPENAI_REFUSALS = [
    ("gpt-4o-mini", _set(reasoning={"effort": "high"}), 400, "Unrecognized request argument supplied: reasoning"),
    ("gpt-4o-mini", _set(reasoning_effort="high"), 400, "'reasoning_effort' is not supported with this model"),
    ("gpt-5-mini", _set(max_tokens=100), 400, "Use 'max_completion_tokens' instead"),
    ("gpt-5-mini", _set(temperature=0.2), 400, "Only the default (1) value is supported"),
    ("gpt-4o-mini", _set(max_tokens=32000), 400, "This model supports at most 16384 completion tokens"),
    ("gpt-4o-mini", _set(user="u" * 150), 400, "Expected a string with maximum length 64"),
    ("gpt-4o-mini", _set(model="gpt-nope"), 404, "does not exist"),
    ("gpt-4o-mini", lambda b: b["messages"].append({"role": "tool", "tool_call_id": "call_x", "content": "x"}),
     400, "must be a response to a preceeding message with 'tool_calls'"),
    ("gpt-4o-mini", lambda b: b["messages"].append({"role": "assistant", "tool_calls": [
        {"id": "call_y", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
     400, "did not have response messages: call_y"),
    ("gpt-4o-mini", lambda b: b["tools"].append({"type": "function", "function": {"name": "bad name"}}),
     400, "does not match pattern"),
]


@pytest.mark.parametrize("model,mutate,status,words", OPENAI_REFUSALS)
def test_openai_fake_refuses_what_openai_refuses(openai_fake: tuple[AgentSession, str], model: str,
                                                 mutate: Callable[[dict[str, Any]], None], status: int,
                                                 words: str) -> None:
    session, url = openai_fake
    session.reset(TASK)
    body, _ = chat_turns(model)
    mutate(body)
    answer = httpx.post(url, json=body, timeout=10)
    assert answer.status_code == status and words in answer.json()["error"]["message"]
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert session.refusals and not session.calls


# ------------------------------------------------------------------------------ Anthropic Messages


def claude_first(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 4096, "tools": [CLAUDE_WRITE],
            "messages": [{"role": "user", "content": TASK.prompt()}], **extra}


THINKING = {"type": "enabled", "budget_tokens": 1024}


def claude_second(first_answer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    use = next(b for b in first_answer["content"] if b["type"] == "tool_use")
    body = claude_first(**extra)
    body["messages"] += [{"role": "assistant", "content": first_answer["content"]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                                       "content": "written"}]}]
    return body


def test_anthropic_fake_plays_the_session_with_thinking(anthropic_fake: tuple[AgentSession, str]) -> None:
    session, url = anthropic_fake
    session.reset(TASK)
    first = httpx.post(url, json=claude_first(thinking=THINKING), headers=ANTHROPIC_HEADERS, timeout=10).json()
    assert [b["type"] for b in first["content"]] == ["thinking", "text", "tool_use"]
    assert first["content"][0]["signature"] == sign(first["content"][0]["thinking"])
    final = httpx.post(url, json=claude_second(first, thinking=THINKING), headers=ANTHROPIC_HEADERS, timeout=10)
    assert final.status_code == 200 and session.completed and not session.refusals
    streamed = httpx.post(url, json={**claude_first(thinking=THINKING), "stream": True}, headers=ANTHROPIC_HEADERS,
                          timeout=10).text
    assert "signature_delta" in streamed and "input_json_delta" in streamed and streamed.rstrip().endswith(
        '{"type": "message_stop"}')


def _strip_thinking(body: dict[str, Any]) -> None:
    body["messages"][1]["content"] = body["messages"][1]["content"][1:]


def _alter_signature(body: dict[str, Any]) -> None:
    body["messages"][1]["content"][0]["thinking"] += " (edited)"


ANTHROPIC_REFUSALS = [
    (_strip_thinking, "Expected `thinking` or `redacted_thinking`, but found `text`"),
    (_alter_signature, "Invalid `signature` in `thinking` block"),
    (lambda b: b["messages"].insert(1, {"role": "system", "content": "be brief"}), 'Unexpected role "system"'),
    (lambda b: b["messages"][2]["content"][0].update(tool_use_id="toolu_other"),
     "unexpected `tool_use_id` found in `tool_result` blocks: toolu_other"),
    (lambda b: b["messages"].pop(), "`tool_use` ids were found without `tool_result` blocks"),
    (lambda b: b["messages"][0].update(content=[{"type": "text", "text": "  "}]), "non-whitespace text"),
    (_set(reasoning_effort="high"), "reasoning_effort: Extra inputs are not permitted"),
    (_set(temperature=0.5, top_p=0.9), "`temperature` and `top_p` cannot both be specified"),
    (_set(max_tokens=64001), "64001 > 64000"),
    (_set(thinking={"type": "enabled", "budget_tokens": 8192}, max_tokens=4096),
     "`max_tokens` must be greater than `thinking.budget_tokens`"),
]


@pytest.mark.parametrize("mutate,words", ANTHROPIC_REFUSALS)
def test_anthropic_fake_refuses_what_anthropic_refuses(anthropic_fake: tuple[AgentSession, str],
                                                       mutate: Callable[[dict[str, Any]], None], words: str) -> None:
    session, url = anthropic_fake
    session.reset(TASK)
    first = httpx.post(url, json=claude_first(thinking=THINKING), headers=ANTHROPIC_HEADERS, timeout=10).json()
    body = claude_second(first, thinking=THINKING)
    mutate(body)
    answer = httpx.post(url, json=body, headers=ANTHROPIC_HEADERS, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "error" and words in answer.json()["error"]["message"]
    assert not session.completed


def test_anthropic_fake_wants_its_headers(anthropic_fake: tuple[AgentSession, str]) -> None:
    _, url = anthropic_fake
    assert httpx.post(url, json=claude_first(), headers={"anthropic-version": "2023-06-01"}).status_code == 401
    assert httpx.post(url, json=claude_first(), headers={"x-api-key": "k"}).status_code == 400
