"""A scripted, strict Gemini upstream (``/v1beta/models/{model}:method``) that drives an agent through one
two-step tool session: asked to create a file, it answers the first request with a ``functionCall`` of
the agent's write tool, and the request that brings that call's ``functionResponse`` back with a final
text. Requests that offer no write tool, or come after the session's call (side requests: titles,
routing, checks) get a short text. The decision is made from each request's own conversation, as a
real model's would be.

It refuses what Gemini refuses, with Google's own 400 (``{"error": {"code", "message", "status"}}``):
- a bad key: 400 ``API_KEY_INVALID``, not 401 (reference/provider-formats.md §4.5);
- a field the API does not have, at the top, in ``generationConfig`` or ``thinkingConfig``, in a content
  or a part: proto3 JSON's ``Unknown name "…": Cannot find field`` (snake_case spellings are accepted);
- a role other than ``user``/``model``, an empty ``parts``, a part without exactly one kind of data;
- a ``functionResponse`` turn that does not come right after the ``functionCall`` turn it answers, or that
  answers a different number of calls (the messages Gemini CLI users report verbatim: gemini-cli
  issues #16415, #14590), or names another function than the call's;
- Gemini 3: a ``functionCall`` of the current turn without its ``thoughtSignature``, or with one this
  fake did not issue (ai.google.dev/gemini-api/docs/thought-signatures: "you must pass back thought
  signatures during function calling, otherwise you will get a validation error"; Google's documented
  placeholder ``skip_thought_signature_validator`` is accepted);
- ``thinkingBudget`` and ``thinkingLevel`` together; ``thinkingBudget: 0`` on 2.5 Pro, which cannot turn
  thinking off (ai.google.dev/gemini-api/docs/thinking);
- tool schemas in ``parameters`` (Gemini's OpenAPI subset) with JSON-Schema-only keys.

Answers as Gemini does: thoughts only when ``includeThoughts`` is set, a ``thoughtSignature`` on the
function call of a thinking model, ``finishReason: STOP`` for a call too, ``usageMetadata``; streams are
``data:``-only SSE with CRLF separators, the call whole in one chunk, the last with finish and usage.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

FINAL_TEXT = "Done: the file is written."
SIDE_TEXT = "OK."
THOUGHT = "The user wants a file; I will write it with the write tool."
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
# Agents' write tools: name → arguments for the task (Gemini CLI's write_file; the SDK tests declare the same)
WRITE_TOOLS = {"write_file": lambda task: {"file_path": task.path, "content": task.content}}


@dataclass(frozen=True)
class AgentTask:
    path: str
    content: str

    def prompt(self) -> str:
        return (f"Create the file {self.path} containing exactly the text {self.content!r} "
                "(no newline at the end). Use your file-writing tool, then say done.")


@dataclass
class GeminiAgentSession:
    """The script and what happened, shared by the fake's server thread and the test."""

    task: AgentTask
    api_key: str = "test-gemini-key"
    call_ids: bool = False  # answer calls with an ``id`` (newer models do; older ones leave it to the client)
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"model", "method", "body"}
    refusals: list[str] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call key (id, else name) → tool name
    signatures: set[str] = field(default_factory=set)  # thought signatures issued
    results: dict[str, Any] = field(default_factory=dict)  # call key → the response object sent back
    finals: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reset(self, task: AgentTask) -> None:
        with self._lock:
            self.task = task
            self.requests, self.refusals, self.calls, self.results, self.finals = [], [], {}, {}, 0
            self.signatures = set()

    @property
    def completed(self) -> bool:
        """The agent got the call, sent its result back and received the final text."""
        return bool(self.results) and self.finals > 0

    def explain(self) -> str:
        return (f"requests={[(r['model'], r['method']) for r in self.requests][:6]} calls={self.calls} "
                f"results={self.results} refusals={self.refusals[-3:]}")


class Refusal(Exception):
    def __init__(self, message: str, status: int = 400, rpc: str = "INVALID_ARGUMENT",
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.rpc, self.details = status, rpc, details or []


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


def _parts(content: dict[str, Any], c: int) -> list[dict[str, Any]]:
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise Refusal(f"* GenerateContentRequest.contents[{c}].parts: contents.parts must not be empty.")
    out = []
    for p, part in enumerate(parts):
        part = _known(part, PART_FIELDS, f"contents[{c}].parts[{p}]")
        if sum(name in part for name in DATA_FIELDS) != 1:
            raise Refusal(f"* GenerateContentRequest.contents[{c}].parts[{p}].data: required oneof field 'data' "
                          "must have one initialized field")
        out.append(part)
    return out


def _is_gemini3(model: str) -> bool:
    return model.startswith("gemini-3") or model.startswith("gemini-4")


def check(session: GeminiAgentSession, model: str,
          body: Any) -> tuple[bool, set[str], list[tuple[str, dict[str, Any]]]]:
    """Refuses (``Refusal``) what Gemini would; returns (include thoughts, tool names, the calls answered:
    (call key, response object))."""
    body = _known(body, REQUEST_FIELDS, "")
    config = _known(body.get("generationConfig") or {}, CONFIG_FIELDS, "generation_config")
    thinking = _known(config.get("thinkingConfig") or {}, THINKING_FIELDS, "generation_config.thinking_config")
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise Refusal("You can only set one of thinking budget and thinking level.")
    if thinking.get("thinkingBudget") == 0 and model.startswith("gemini-2.5-pro"):
        raise Refusal("Budget 0 is invalid. This model only works in thinking mode.")
    tools: set[str] = set()
    for t, tool in enumerate(body.get("tools") or ()):
        for d, declaration in enumerate(tool.get("functionDeclarations") or ()):
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                raise Refusal(f"tools[{t}].function_declarations[{d}]: parameters and parameters_json_schema "
                              "are mutually exclusive.")
            _schema_problem(declaration.get("parameters"), f"tools[{t}].function_declarations[{d}].parameters")
            tools.add(declaration.get("name"))
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Refusal("* GenerateContentRequest.contents: contents is not specified")
    turn_start = 0  # the current turn starts at the last user content with text (thought-signatures doc)
    decoded = []
    for c, content in enumerate(contents):
        content = _known(content, frozenset({"role", "parts"}), f"contents[{c}]")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise Refusal("Please use a valid role: user, model.")
        parts = _parts(content, c)
        decoded.append((role, parts))
        if role == "user" and any("text" in p for p in parts):
            turn_start = c
    pending: list[dict[str, Any]] = []
    answered: list[tuple[str, dict[str, Any]]] = []
    for c, (role, parts) in enumerate(decoded):
        responses = [p["functionResponse"] for p in parts if "functionResponse" in p]
        if role == "model":
            if pending:
                raise Refusal("Please ensure that function response turn comes immediately after a function "
                              "call turn.")
            calls = [p for p in parts if "functionCall" in p]
            pending = [p["functionCall"] for p in calls]
            if calls and c >= turn_start and _is_gemini3(model):
                signature = calls[0].get("thoughtSignature")
                if not signature:
                    raise Refusal(f"Function call `{calls[0]['functionCall'].get('name')}` in the `{c}.` content "
                                  "block is missing a `thought_signature`.")
                if signature != DUMMY_SIGNATURE and signature not in session.signatures:
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
            if call.get("id") and response.get("id") != call.get("id"):
                raise Refusal(f"Function response id '{response.get('id')}' does not match the function call id.")
            if not isinstance(response.get("response"), dict):
                raise Refusal("function_response.response must be an object.")
            # a call the fake made without an id is known by its name (the client may add an id of its own)
            key = call.get("id") if call.get("id") in session.calls else call.get("name")
            answered.append((key, response["response"]))
        pending = []
    return bool(thinking.get("includeThoughts")), tools, answered


def _usage(body: dict[str, Any], answer: int, thoughts: int) -> dict[str, Any]:
    prompt = max(1, len(json.dumps(body.get("contents", []))) // 4)
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": answer, "totalTokenCount": prompt + answer + thoughts}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def decide(session: GeminiAgentSession, model: str, tools: set[str], answered: list[tuple[str, dict[str, Any]]],
           include_thoughts: bool) -> list[dict[str, Any]]:
    """The answer's parts for this request."""
    thinking = model.startswith(("gemini-2.5", "gemini-3", "gemini-4"))
    thought = [{"text": THOUGHT, "thought": True}] if thinking and include_thoughts else []
    with session._lock:
        ours = {key: response for key, response in answered if key in session.calls}
        if ours:
            session.results.update(ours)
            session.finals += 1
            return [*thought, {"text": FINAL_TEXT}]
        tool = next((name for name in WRITE_TOOLS if name in tools), None)
        if tool is None or session.calls:
            return [*thought, {"text": SIDE_TEXT}]
        call: dict[str, Any] = {"name": tool, "args": WRITE_TOOLS[tool](session.task)}
        if session.call_ids:
            call["id"] = f"gem_call_{len(session.calls) + 1}"
        session.calls[call.get("id") or tool] = tool
        part: dict[str, Any] = {"functionCall": call}
        if thinking:
            signature = secrets.token_urlsafe(24)
            session.signatures.add(signature)
            part["thoughtSignature"] = signature
        return [*thought, part]


def _response(parts: list[dict[str, Any]], model: str, usage: dict[str, Any] | None,
              finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model, "responseId": "agent-fake"}
    if usage:
        out["usageMetadata"] = usage
    return out


async def _sse(events: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\r\n\r\n"


def _error(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": {"code": refusal.status, "message": str(refusal), "status": refusal.rpc,
                                   "details": refusal.details}}, status_code=refusal.status)


def create_app(session: GeminiAgentSession) -> Starlette:
    async def models(request: Request) -> Response:
        model, _, method = request.path_params["target"].rpartition(":")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(Refusal("Invalid JSON payload received."))
        session.requests.append({"model": model, "method": method, "body": body})
        try:
            if key != session.api_key:
                raise Refusal("API key not valid. Please pass a valid API key.", details=[
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com"}])
            if method == "countTokens":
                return JSONResponse({"totalTokens": max(1, len(json.dumps(body)) // 4)})
            if method not in ("generateContent", "streamGenerateContent"):
                raise Refusal(f"Method {method} not found.", 404, "NOT_FOUND")
            include_thoughts, tools, answered = check(session, model, body)
        except Refusal as refusal:
            session.refusals.append(f"{refusal.status}: {refusal}")
            return _error(refusal)
        parts = decide(session, model, tools, answered, include_thoughts)
        thoughts = len(THOUGHT.split()) if any(p.get("thought") for p in parts) else 0
        usage = _usage(body, sum(len(json.dumps(p).split()) for p in parts if not p.get("thought")), thoughts)
        if method == "generateContent":
            return JSONResponse(_response(parts, model, usage, True))
        if request.query_params.get("alt") != "sse":
            return _error(Refusal("this fake streams with alt=sse only"))
        partial = {"promptTokenCount": usage["promptTokenCount"], "totalTokenCount": usage["promptTokenCount"]}
        events = [_response([p], model, partial, False) for p in parts[:-1]]
        last = parts[-1]
        if "text" in last and len(last["text"]) > 1:  # text arrives in pieces; a call arrives whole
            half = len(last["text"]) // 2
            events.append(_response([{"text": last["text"][:half]}], model, partial, False))
            last = {"text": last["text"][half:]}
        events.append(_response([last], model, usage, True))
        return StreamingResponse(_sse(events), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1beta/models/{target:path}", models, methods=["POST"])])
