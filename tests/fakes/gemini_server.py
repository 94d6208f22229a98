"""A fake Gemini API (``/v1beta/models/{model}:method``) that is as strict as the real one where it matters.

It rejects what Google rejects and gateways get wrong: a bad key (HTTP 400 ``API_KEY_INVALID``, not 401),
JSON-Schema keys that are not in Gemini's schema subset, a ``functionResponse`` without a name, empty parts
and unknown roles; per model family (``tests/fakes/strict.py``), unknown fields and ``generationConfig`` keys,
thinking budgets out of the model's range (``0`` to 2.5 Pro) and outputs above its limit. Streams are ``data:``-only SSE with CRLF separators and no terminator; intermediate
chunks carry partial usage, the last one ``finishReason`` and the full usage.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.strict import GEMINI_RULES, first_refusal

@dataclass
class GeminiFakeState:
    """What the fake answers. Tests mutate it between requests.

    ``failures`` is consumed one entry per request: an HTTP status (503, 429, 500…), ``"api_key_invalid"``,
    ``"reset"`` (headers then a dropped connection), ``"cut"`` (a stream that ends cleanly without a
    finishReason), ``"malformed_call"`` (finishReason MALFORMED_FUNCTION_CALL) or ``"blocked"`` (a prompt
    blocked by promptFeedback).
    """

    api_key: str = "test-gemini-key"
    reply: str = "Hello from the fake Gemini."
    function_call: dict[str, Any] | None = None  # {"name", "args", "thoughtSignature"?}, used when tools are sent
    failures: list[Any] = field(default_factory=list)
    retry_delay: str = "7s"
    repeat_stop: bool = False  # old models: finishReason STOP on every stream chunk
    thoughts: str = ""  # a thought-summary part sent before the answer
    requests: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, rpc: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = {"error": {"code": status, "message": message, "status": rpc, "details": details or []}}
    return JSONResponse(body, status_code=status)


def _key_invalid() -> JSONResponse:
    return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
    ])


def _status_error(status: int, state: GeminiFakeState) -> JSONResponse:
    if status == 429:
        return _error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": state.retry_delay},
        ])
    rpc = {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 404: "NOT_FOUND"}.get(status, "UNKNOWN")
    return _error(status, rpc, f"The model is overloaded. ({rpc})")


def validate(body: dict[str, Any]) -> str | None:
    """The first reason the real API would reject this body, or None."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for n, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{n}])"
        if not content.get("parts"):
            return f"* GenerateContentRequest.contents[{n}].parts: contents.parts must not be empty."
        for part in content["parts"]:
            response = part.get("functionResponse")
            if response is not None and not response.get("name"):
                return f"* GenerateContentRequest.contents[{n}]: function_response.name: Name cannot be empty."
            if response is not None and not isinstance(response.get("response"), dict):
                return f"* GenerateContentRequest.contents[{n}]: function_response.response must be an object."
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    if "thinkingLevel" in thinking and "thinkingBudget" in thinking:
        return "You can only set one of thinking budget and thinking level."
    return None


def signature_problem(model: str, body: dict[str, Any]) -> str | None:
    """Gemini 3 rejects a model turn whose first function call carries no thought signature."""
    if "gemini-3" not in model:
        return None
    for n, content in enumerate(body.get("contents") or ()):
        calls = [p for p in content.get("parts") or () if "functionCall" in p]
        if content.get("role") == "model" and calls and not calls[0].get("thoughtSignature"):
            return (f"Function call is missing a thought_signature in functionCall parts. (contents[{n}].parts)")
    return None


def _word_count(body: dict[str, Any]) -> int:
    return max(1, len(json.dumps(body.get("contents", [])).split()))


def _wants_call(state: GeminiFakeState, body: dict[str, Any]) -> bool:
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    return bool(state.function_call and body.get("tools") and mode != "NONE")


def _call_part(state: GeminiFakeState) -> dict[str, Any]:
    call = dict(state.function_call or {})
    signature = call.pop("thoughtSignature", None)
    part: dict[str, Any] = {"functionCall": call}
    if signature:
        part["thoughtSignature"] = signature
    return part


def _usage(prompt: int, answer: int | None) -> dict[str, Any]:
    if answer is None:
        return {"promptTokenCount": prompt, "totalTokenCount": prompt}
    return {"promptTokenCount": prompt, "candidatesTokenCount": answer, "totalTokenCount": prompt + answer}


def _response(parts: list[dict[str, Any]], finish: str | None, usage: dict[str, Any], model: str) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-r1"}


def _answer_parts(state: GeminiFakeState, body: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if state.thoughts:
        parts.append({"text": state.thoughts, "thought": True})
    parts.append(_call_part(state) if _wants_call(state, body) else {"text": state.reply})
    return parts


ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGE_TOKENS = 1290  # what Gemini 2.5 Flash Image bills for one 1024px image


def gemini_image(prompt: str, ratio: str) -> bytes:
    """The fake's image for this prompt and aspect ratio (deterministic bytes, PNG magic first)."""
    seed = hashlib.sha256(f"{prompt}|{ratio}".encode()).digest()
    return b"\x89PNG\r\n\x1a\n" + seed * 64


def _image(body: dict[str, Any], model: str) -> JSONResponse:
    """An image model's answer: an image part when ``responseModalities`` has IMAGE, else text only."""
    config = body.get("generationConfig") or {}
    if (config.get("candidateCount") or 1) > 1:
        return _error(400, "INVALID_ARGUMENT", "Multiple candidates is not enabled for this model.")
    ratio = (config.get("imageConfig") or {}).get("aspectRatio", "1:1")
    if ratio not in ASPECT_RATIOS:
        return _error(400, "INVALID_ARGUMENT", f"Unsupported aspect ratio: {ratio}.")
    prompt = " ".join(p.get("text", "") for c in body["contents"] for p in c.get("parts", []))
    parts: list[dict[str, Any]] = [{"text": "Here is your image."}]
    if "IMAGE" in (config.get("responseModalities") or ()):
        data = base64.b64encode(gemini_image(prompt, ratio)).decode()
        parts.append({"inlineData": {"mimeType": "image/png", "data": data}})
    usage = _usage(_word_count(body), IMAGE_TOKENS if len(parts) > 1 else 4)
    return JSONResponse(_response(parts, "STOP", usage, model))


def _generate(state: GeminiFakeState, body: dict[str, Any], model: str, failure: Any) -> JSONResponse:
    if "-image" in model:
        return _image(body, model)
    prompt = _word_count(body)
    if failure == "blocked":
        return JSONResponse({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                             "usageMetadata": _usage(prompt, None), "modelVersion": model})
    finish = "MALFORMED_FUNCTION_CALL" if failure == "malformed_call" else "STOP"
    parts = [] if failure == "malformed_call" else _answer_parts(state, body)
    return JSONResponse(_response(parts, finish, _usage(prompt, len(state.reply.split())), model))


async def _sse(state: GeminiFakeState, body: dict[str, Any], model: str, failure: Any) -> AsyncIterator[bytes]:
    prompt = _word_count(body)
    words = state.reply.split(" ")
    pieces = [" ".join(words[: len(words) // 2]) + " ", " ".join(words[len(words) // 2:])]
    events: list[dict[str, Any]] = []
    if state.thoughts:
        events.append(_response([{"text": state.thoughts, "thought": True}], None, _usage(prompt, None), model))
    if _wants_call(state, body):
        events.append(_response([{"text": "Let me check. "}], None, _usage(prompt, None), model))
        events.append(_response([_call_part(state)], None, _usage(prompt, None), model))
    else:
        events += [_response([{"text": p}], None, _usage(prompt, None), model) for p in pieces if p.strip()]
    if failure == "cut":
        events = events[:1]
    else:
        if state.repeat_stop:
            for event in events:
                event["candidates"][0]["finishReason"] = "STOP"
        events[-1]["candidates"][0]["finishReason"] = "STOP"
        events[-1]["usageMetadata"] = _usage(prompt, len(state.reply.split()))
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\r\n\r\n"


async def _reset() -> AsyncIterator[bytes]:
    raise ConnectionResetError("fake gemini: connection dropped on purpose")
    yield b""  # pragma: no cover - makes this an async generator


def _embed(body: dict[str, Any]) -> JSONResponse:
    embeddings = []
    for n, item in enumerate(body.get("requests") or ()):
        text = " ".join(p.get("text", "") for p in (item.get("content") or {}).get("parts", []))
        size = int(item.get("outputDimensionality") or 8)
        embeddings.append({"values": [round((len(text) + n + k) / 100, 4) for k in range(size)]})
    if not embeddings:
        return _error(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: must not be empty")
    return JSONResponse({"embeddings": embeddings})


def create_gemini_app(state: GeminiFakeState) -> Starlette:
    async def models(request: Request) -> Response:
        target = request.path_params["target"]
        model, _, method = target.partition(":")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        body = await request.json()
        state.requests.append({"model": model, "method": method, "query": dict(request.query_params),
                               "key_ok": key == state.api_key, "body": body})
        failure = state.failures.pop(0) if state.failures else None
        if key != state.api_key or failure == "api_key_invalid":
            return _key_invalid()
        if isinstance(failure, int):
            return _status_error(failure, state)
        if failure == "reset":
            return StreamingResponse(_reset(), media_type="text/event-stream")
        if method == "batchEmbedContents":
            return _embed(body)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, "NOT_FOUND", f"Method {method!r} not found for model {model!r}.")
        refusal = first_refusal(GEMINI_RULES, model, body)  # per model family (tests/fakes/strict.py)
        problem = validate(body) or signature_problem(model, body) or (refusal[0] if refusal else None)
        if problem:
            return _error(400, "INVALID_ARGUMENT", problem)
        if method == "generateContent":
            return _generate(state, body, model, failure)
        if request.query_params.get("alt") != "sse":
            return _error(400, "INVALID_ARGUMENT", "this fake only streams with alt=sse")
        return StreamingResponse(_sse(state, body, model, failure), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1beta/models/{target}", models, methods=["POST"])])
