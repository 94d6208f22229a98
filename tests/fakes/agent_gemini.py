"""The scripted agent session (``agent_script.py``) behind Gemini's API (``/v1beta/models/{model}:method``),
as strict as Gemini: asked to create a file, it answers with a ``functionCall`` of the agent's write tool
(Gemini CLI's ``write_file``…), and the request that brings that call's ``functionResponse`` back with the
final text.

Refused with Google's own 400 (``{"error": {"code", "message", "status"}}``):
- a bad key: 400 ``API_KEY_INVALID``, not 401 (reference/provider-formats.md §4.5);
- a field the API does not have, at the top, in ``generationConfig`` or ``thinkingConfig``, in a content
  or a part: proto3 JSON's ``Unknown name "…": Cannot find field`` (snake_case spellings are accepted);
- a role other than ``user``/``model``, an empty ``parts``, a part without exactly one kind of data;
- a ``functionResponse`` turn that does not come right after the ``functionCall`` turn it answers, or that
  answers a different number of calls (the messages Gemini CLI users report verbatim: gemini-cli
  issues #16415, #14590), or another function, or another call's ``id`` (the ``id`` is optional:
  google-genai's own automatic function calling sends none);
- Gemini 3: a ``functionCall`` of the current turn (since the last user text) without its
  ``thoughtSignature``, or with one this fake did not issue (ai.google.dev/gemini-api/docs/thought-
  signatures: "you must pass back thought signatures during function calling, otherwise you will get a
  validation error"; Google's documented placeholder ``skip_thought_signature_validator`` passes);
- ``thinkingBudget`` and ``thinkingLevel`` together; ``thinkingBudget: 0`` on 2.5 Pro, which cannot turn
  thinking off (ai.google.dev/gemini-api/docs/thinking);
- tool schemas in ``parameters`` (Gemini's OpenAPI subset) with JSON-Schema-only keys.

Answers as Gemini does: thinking models (2.5 and later) sign their function calls, show a thought part
only when ``includeThoughts`` is set, and end a call with ``finishReason: STOP``; Gemini 3 and later give
the call an ``id`` (2.5 leaves it to the client: both shapes reach the gateway). Streams are ``data:``-only
SSE with CRLF separators, text in pieces, a call whole, finish and usage on the last chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.agent_script import THINKING, AgentSession, Seen, Turn, sign, tool_result_text

API_KEY = "test-gemini-key"
DUMMY_SIGNATURE = "skip_thought_signature_validator"
REQUEST_FIELDS = frozenset({"model", "contents", "systemInstruction", "generationConfig", "safetySettings", "tools",
                            "toolConfig", "cachedContent", "labels", "serviceTier", "store"})
CONFIG_FIELDS = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema", "responseLogprobs",
    "logprobs", "responseModalities", "mediaResolution", "speechConfig", "thinkingConfig", "imageConfig",
})
THINKING_FIELDS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult")
PART_FIELDS = frozenset({*DATA_FIELDS, "thought", "thoughtSignature", "videoMetadata"})
# Keys of Gemini's schema subset (ai.google.dev/api/caching#Schema); JSON Schema goes in parametersJsonSchema
SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                         "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                         "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
                         "maximum"})


class Refusal(Exception):
    def __init__(self, message: str, status: int = 400, rpc: str = "INVALID_ARGUMENT",
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.rpc, self.details = message, status, rpc, details or []


def thinks(model: str) -> bool:
    return model.startswith(("gemini-2.5", "gemini-3", "gemini-4"))


def gives_call_ids(model: str) -> bool:
    return model.startswith(("gemini-3", "gemini-4"))


def validates_signatures(model: str) -> bool:
    return model.startswith(("gemini-3", "gemini-4"))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _known(obj: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Refusal(f"Invalid value at '{where}': expected an object.")
    out = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            at = f" at '{where}'" if where else ""
            raise Refusal(f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')
        out[name] = value
    return out


def _schema_problem(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            raise Refusal(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.')
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                _schema_problem(sub, f"{where}.properties[{name}].value")
        elif key == "items":
            _schema_problem(value, f"{where}.items")
        elif key == "anyOf" and isinstance(value, list):
            for n, sub in enumerate(value):
                _schema_problem(sub, f"{where}.any_of[{n}]")


def _contents(body: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Refusal("* GenerateContentRequest.contents: contents is not specified")
    out = []
    for c, content in enumerate(contents):
        content = _known(content, frozenset({"role", "parts"}), f"contents[{c}]")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise Refusal("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Refusal(f"* GenerateContentRequest.contents[{c}].parts: contents.parts must not be empty.")
        checked = []
        for p, part in enumerate(parts):
            part = _known(part, PART_FIELDS, f"contents[{c}].parts[{p}]")
            if sum(name in part for name in DATA_FIELDS) != 1:
                raise Refusal(f"* GenerateContentRequest.contents[{c}].parts[{p}].data: required oneof field "
                              "'data' must have one initialized field")
            checked.append(part)
        out.append((role, checked))
    return out


def check(session: AgentSession, model: str, body: Any) -> tuple[bool, Seen]:
    """Refuses (``Refusal``) what Gemini would; returns (include thoughts, what the script needs to know)."""
    body = _known(body, REQUEST_FIELDS, "")
    config = _known(body.get("generationConfig") or {}, CONFIG_FIELDS, "generation_config")
    thinking = _known(config.get("thinkingConfig") or {}, THINKING_FIELDS, "generation_config.thinking_config")
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise Refusal("You can only set one of thinking budget and thinking level.")
    if thinking.get("thinkingBudget") == 0 and model.startswith("gemini-2.5-pro"):
        raise Refusal("Budget 0 is invalid. This model only works in thinking mode.")
    tools: list[str] = []
    for t, tool in enumerate(body.get("tools") or ()):
        for d, declaration in enumerate(tool.get("functionDeclarations") or ()):
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                raise Refusal(f"tools[{t}].function_declarations[{d}]: parameters and parameters_json_schema "
                              "are mutually exclusive.")
            _schema_problem(declaration.get("parameters"), f"tools[{t}].function_declarations[{d}].parameters")
            tools.append(str(declaration.get("name")))
    contents = _contents(body)
    # the current turn starts at the last user content with text (the thought-signatures guide's "turn")
    turn_start = max((c for c, (role, parts) in enumerate(contents)
                      if role == "user" and any("text" in p for p in parts)), default=0)
    issued = {tool: call_id for call_id, tool in session.calls.items()}  # a call sent without id: by its name
    pending: list[dict[str, Any]] = []
    calls: list[str] = []
    results: dict[str, str] = {}
    for c, (role, parts) in enumerate(contents):
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        if role == "model":
            if pending:
                raise Refusal("Please ensure that function response turn comes immediately after a function "
                              "call turn.")
            made = [p for p in parts if "functionCall" in p]
            pending = [p["functionCall"] for p in made]
            calls += [str(call.get("id") or issued.get(call.get("name"), "")) for call in pending]
            if made and c >= turn_start and validates_signatures(model):
                signature = made[0].get("thoughtSignature")
                if not signature:
                    raise Refusal(f"Function call `{pending[0].get('name')}` in the `{c}.` content block is missing "
                                  "a `thought_signature`.")
                if signature not in (DUMMY_SIGNATURE, sign(THINKING)):
                    raise Refusal("Corrupted thought signature.")
            continue
        if responses and not pending:
            raise Refusal("Please ensure that function response turn comes immediately after a function call turn.")
        if pending and len(responses) != len(pending):
            raise Refusal("Please ensure that the number of function response parts is equal to the number of "
                          "function call parts of the function call turn.")
        for call, response in zip(pending, responses):
            if response.get("name") != call.get("name"):
                raise Refusal(f"Function response name '{response.get('name')}' does not match the function call "
                              f"name '{call.get('name')}'.")
            if response.get("id") and response.get("id") != call.get("id"):  # optional, but never another's
                raise Refusal(f"Function response id '{response.get('id')}' does not match the function call id.")
            if not isinstance(response.get("response"), dict):
                raise Refusal("function_response.response must be an object.")
            key = str(call.get("id") or issued.get(call.get("name"), ""))
            results[key] = _result_text(response["response"])
        pending = []
    return bool(thinking.get("includeThoughts")), Seen(tools=tuple(tools), results=results, calls=tuple(calls))


def _result_text(response: dict[str, Any]) -> str:
    for key in ("output", "result", "content"):
        if key in response:
            return tool_result_text(response[key])
    return json.dumps(response)


def parts_of(turn: Turn, model: str, include_thoughts: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if turn.thinking and include_thoughts:
        parts.append({"text": turn.thinking, "thought": True})
    if turn.call_id:
        call: dict[str, Any] = {"name": turn.tool, "args": turn.arguments}
        if gives_call_ids(model):
            call["id"] = turn.call_id
        part: dict[str, Any] = {"functionCall": call}
        if turn.thinking:
            part["thoughtSignature"] = sign(turn.thinking)
        parts.append(part)
    else:
        parts.append({"text": turn.text})
    return parts


def _response(parts: list[dict[str, Any]], model: str, usage: dict[str, Any], finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "agent-fake"}


def stream_events(parts: list[dict[str, Any]], model: str, usage: dict[str, Any]) -> list[dict[str, Any]]:
    """Thoughts, then text in two pieces or the call whole; the last chunk carries finish and full usage."""
    partial = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
    events = [_response([p], model, partial, False) for p in parts[:-1]]
    last = parts[-1]
    if "text" in last and len(last["text"]) > 1:
        half = len(last["text"]) // 2
        events.append(_response([{"text": last["text"][:half]}], model, partial, False))
        last = {"text": last["text"][half:]}
    return [*events, _response([last], model, usage, True)]


def _error(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": {"code": refusal.status, "message": refusal.message, "status": refusal.rpc,
                                   "details": refusal.details}}, status_code=refusal.status)


def create_app(session: AgentSession) -> Starlette:
    async def models(request: Request) -> Response:
        model, _, method = request.path_params["target"].rpartition(":")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        session.record(request.url.path, dict(request.headers), body)
        try:
            if key != API_KEY:
                raise Refusal("API key not valid. Please pass a valid API key.", details=[
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com"}])
            if method == "countTokens":
                return JSONResponse({"totalTokens": max(1, len(json.dumps(body)) // 4)})
            if method not in ("generateContent", "streamGenerateContent"):
                raise Refusal(f"Method {method} not found.", 404, "NOT_FOUND")
            if method == "streamGenerateContent" and request.query_params.get("alt") != "sse":
                raise Refusal("this fake streams with alt=sse only")
            include_thoughts, seen = check(session, model, body)
        except Refusal as refusal:
            session.refuse(refusal.status, refusal.message)
            return _error(refusal)
        turn = session.decide(seen, thinking=thinks(model))
        parts = parts_of(turn, model, include_thoughts)
        prompt = max(1, len(json.dumps(body.get("contents", []))) // 4)
        answer = sum(len(json.dumps(p).split()) for p in parts if not p.get("thought"))
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": answer, "totalTokenCount": prompt + answer}
        if turn.thinking:
            usage["thoughtsTokenCount"] = len(turn.thinking.split())
            usage["totalTokenCount"] += usage["thoughtsTokenCount"]
        if method == "generateContent":
            return JSONResponse(_response(parts, model, usage, True))

        async def frames() -> AsyncIterator[bytes]:
            for event in stream_events(parts, model, usage):
                yield b"data: " + json.dumps(event).encode() + b"\r\n\r\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1beta/models/{target:path}", models, methods=["POST"])])
