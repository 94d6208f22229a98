"""``/v1/responses`` through the gateway with the official clients' stream helpers, which accumulate the
events into a Response and throw on a stream they cannot follow: the Python SDK's
``responses.stream()`` and the Node SDK's (``tests/node/openai_responses_stream.cjs``; it threw
``missing content at index 0`` on reasoning summaries without their summary part)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests import agent_clients, responses_grammar
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, tokens_text

MODEL = "openai/gpt-4o-mini"
THOUGHT = "Considering the greeting first."
REQUEST: dict[str, Any] = {
    "model": MODEL, "input": "Hello", "instructions": "Be brief.",
    "tools": [{"type": "function", "name": "lookup", "description": "Look something up", "strict": False,
               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}],
    "tool_choice": "auto", "parallel_tool_calls": False, "max_output_tokens": 500, "temperature": 0.4,
    "top_p": 0.8, "metadata": {"ticket": "7"}, "reasoning": {"summary": "auto"},
}
ECHOED = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens", "temperature",
          "top_p", "metadata")


def expected_text(state: OpenAIFakeState) -> str:
    return tokens_text(state.tokens)


def raw_events(gateway: GatewayHarness, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True},
                      headers={"authorization": f"Bearer {key}"}, timeout=20) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_stream_with_reasoning_follows_the_grammar(gateway: GatewayHarness, gateway_env: dict[str, str],
                                                   fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.reasoning = THOUGHT
    events = raw_events(gateway, gateway_env["MEGABRAIN_TEST_API_KEY"], REQUEST)
    responses_grammar.check(events)
    assert [e["type"] for e in events].count("response.reasoning_summary_part.added") == 1


def test_python_sdk_stream_helper(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.reasoning = THOUGHT
    with client.responses.stream(**REQUEST) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_part.added" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == THOUGHT
    assert final.output_text == expected_text(state)
    for name in ECHOED:
        assert json.loads(json.dumps(getattr(final, name), default=lambda o: o.model_dump(exclude_none=True))) == \
            REQUEST[name], name


def test_node_sdk_stream_helper(gateway: GatewayHarness, gateway_env: dict[str, str],
                                fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.reasoning = THOUGHT
    payload = {"baseURL": gateway.url + "/v1", "apiKey": gateway_env["MEGABRAIN_TEST_API_KEY"], "request": REQUEST}
    done = agent_clients.run_node("openai_responses_stream.cjs", json.dumps(payload), package="openai")
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-2000:])
    final = result["final"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": THOUGHT}]
    assert final["output"][1]["content"][0]["text"] == expected_text(state)
    assert {name: final[name] for name in ECHOED} == {name: REQUEST[name] for name in ECHOED}
    responses_grammar.check([{k: v for k, v in e.items() if k != "snapshot"} for e in result["events"]])


@pytest.mark.parametrize("stream", [False, True])
def test_python_sdk_tool_call_echoes_tools(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str],
                                           stream: bool) -> None:
    state, _ = fake_openai
    state.tool_calls = [{"id": "call_7", "name": "lookup", "arguments": '{"q": "weather"}'}]
    if stream:
        with client.responses.stream(**REQUEST) as s:
            final = s.get_final_response()
    else:
        final = client.responses.create(**REQUEST)
    call = final.output[-1]
    assert call.type == "function_call" and call.call_id == "call_7" and json.loads(call.arguments) == {"q": "weather"}
    assert [tool.name for tool in final.tools] == ["lookup"] and final.tool_choice == "auto"
