"""The scripted Gemini fake refuses what Gemini refuses: otherwise a client passing against it proves little.
Requests go to it directly, over HTTP, as a Gemini upstream gets them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.agent_gemini import API_KEY as KEY, DUMMY_SIGNATURE, create_app
from tests.fakes.agent_script import FINAL_TEXT, AgentSession, AgentTask
from tests.fakes.server import ThreadedServer

TOOLS = [{"functionDeclarations": [{"name": "write_file", "parametersJsonSchema": {
    "type": "object", "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}}}}]}]
USER = {"role": "user", "parts": [{"text": "Create hello.txt"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, AgentSession]]:
    session = AgentSession(AgentTask("/tmp/x/hello.txt", "hi"))
    with ThreadedServer(create_app(session)) as running:
        yield running.url, session


@pytest.fixture
def fake(server: tuple[str, AgentSession]) -> tuple[str, AgentSession]:
    server[1].reset(AgentTask("/tmp/x/hello.txt", "hi"))
    return server


def generate(url: str, model: str, body: dict[str, Any], key: str = KEY) -> httpx.Response:
    return httpx.post(f"{url}/v1beta/models/{model}:generateContent", json=body, headers={"x-goog-api-key": key},
                      timeout=10)


def first_turn(url: str, model: str) -> dict[str, Any]:
    response = generate(url, model, {"contents": [USER], "tools": TOOLS})
    assert response.status_code == 200, response.text
    return response.json()["candidates"][0]["content"]


def answer(call_part: dict[str, Any]) -> dict[str, Any]:
    call = call_part["functionCall"]
    response = {"name": call["name"], "response": {"output": "written"}}
    if call.get("id"):
        response["id"] = call["id"]
    return {"role": "user", "parts": [{"functionResponse": response}]}


def test_the_scripted_session(fake: tuple[str, AgentSession]) -> None:
    url, session = fake
    model_turn = first_turn(url, "gemini-3-flash-preview")
    (part,) = model_turn["parts"]
    assert part["functionCall"]["args"] == {"file_path": "/tmp/x/hello.txt", "content": "hi"}
    assert part["thoughtSignature"]
    second = generate(url, "gemini-3-flash-preview", {"contents": [USER, model_turn, answer(part)], "tools": TOOLS})
    assert second.json()["candidates"][0]["content"]["parts"] == [{"text": FINAL_TEXT}]
    assert session.completed and not session.refusals


@pytest.mark.parametrize("signature, message", [
    (None, "missing a `thought_signature`"),
    ("forged", "Corrupted thought signature"),
])
def test_gemini_3_wants_its_signature_back(fake: tuple[str, AgentSession], signature: str | None,
                                           message: str) -> None:
    url, session = fake
    model_turn = first_turn(url, "gemini-3-flash-preview")
    part = dict(model_turn["parts"][0])
    part.pop("thoughtSignature")
    if signature:
        part["thoughtSignature"] = signature
    response = generate(url, "gemini-3-flash-preview", {"contents": [USER, {"role": "model", "parts": [part]},
                                                                     answer(part)], "tools": TOOLS})
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT" and not session.completed


def test_googles_placeholder_signature_and_older_models_pass(fake: tuple[str, AgentSession]) -> None:
    url, _ = fake
    model_turn = first_turn(url, "gemini-3-flash-preview")
    part = {**model_turn["parts"][0], "thoughtSignature": DUMMY_SIGNATURE}
    assert generate(url, "gemini-3-flash-preview", {"contents": [USER, {"role": "model", "parts": [part]},
                                                                answer(part)]}).status_code == 200
    bare = {"functionCall": part["functionCall"]}
    assert generate(url, "gemini-2.5-flash", {"contents": [USER, {"role": "model", "parts": [bare]},
                                                          answer(bare)]}).status_code == 200


@pytest.mark.parametrize("body, message", [
    ({"contents": [USER, answer({"functionCall": {"name": "write_file"}})]},
     "function response turn comes immediately after a function call turn"),
    ({"contents": [USER, {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}}}]}, USER]},
     "number of function response parts"),
    ({"contents": [USER, {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}}}]},
                   answer({"functionCall": {"name": "read_file"}})]}, "does not match the function call name"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": ""}}]}]},
     "oneof field 'data'"),
    ({"contents": [USER], "generationConfig": {"temprature": 1}}, 'Unknown name "temprature"'),
    ({"contents": [USER], "generationConfig": {"thinkingConfig": {"thinkingBudget": 1, "thinkingLevel": "LOW"}}},
     "one of thinking budget and thinking level"),
    ({"contents": [USER], "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
        "type": "object", "additionalProperties": False}}]}]}, 'Unknown name "additionalProperties"'),
])
def test_refusals(fake: tuple[str, AgentSession], body: dict[str, Any], message: str) -> None:
    url, session = fake
    response = generate(url, "gemini-2.5-flash", body)
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    assert session.refusals


def test_pro_cannot_turn_thinking_off_and_a_bad_key_is_a_400(fake: tuple[str, AgentSession]) -> None:
    url, _ = fake
    off = {"contents": [USER], "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}
    assert generate(url, "gemini-2.5-pro", off).status_code == 400
    assert generate(url, "gemini-2.5-flash", off).status_code == 200
    bad = generate(url, "gemini-2.5-flash", {"contents": [USER]}, key="wrong")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
