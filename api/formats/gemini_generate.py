"""Gemini ``generateContent`` / ``streamGenerateContent?alt=sse`` answers, encoded from canonical events
(the request side is ``gemini_request.py``).

A ``GenerateContentResponse`` per answer or per stream chunk: ``candidates`` (``content.parts``,
``finishReason``, ``index``), ``usageMetadata`` (on the last chunk of a stream), ``modelVersion`` (the
model that answered) and ``responseId``. Parts: thoughts (``{"text", "thought": true}``, only when the
request set ``includeThoughts``, as Gemini does), text, and ``functionCall`` parts with their ``id``. A
stream sends text as it comes and each function call whole (Gemini never splits one), in the last chunk.

Thought signatures. Google's own go back on the part they came with. Another provider's reasoning (an
Anthropic thinking block and its signature, an OpenAI reasoning item) travels in a signature of ours on
the first function call, or on the answer's last text: the canonical ``reasoning_details`` as JSON behind a
fixed prefix, base64 as Google's are (the Python SDK decodes signatures to bytes and encodes them again).
Gemini CLI keeps signatures and drops thought text from its history, so the whole reasoning, text
included, is in the signature: sent back, it gives the provider its thinking exactly as it produced it.

Errors are Google's shape, ``{"error": {"code", "message", "status"}}``, with our ``error_type`` beside it.
A stream that fails after its first chunk ends with that object as a bare JSON line, as Google's streams
do (both SDKs raise on it); keep-alives are blank lines, the only filler both SDKs' parsers skip.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from api.formats import canonical_chunks, envelope_parts
from common.errors import invalid
from common.wire import GEMINI_SIGNATURE_MAGIC as SIGNATURE_MAGIC, Event
from router.shaping import joined_details

_encode = msgspec.json.encode
GOOGLE_FORMAT = "google-gemini-v1"  # reasoning_details format of Gemini's own signatures and thoughts
# 6 magic bytes: every signature of ours starts with the same 8 base64 characters
SIGNATURE_PREFIX = base64.b64encode(SIGNATURE_MAGIC).decode()
FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "function_call": "STOP",
                  "content_filter": "SAFETY"}
# our HTTP status → google.rpc status name (https://cloud.google.com/apis/design/errors#handling_errors)
RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
              404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
              415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
              501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
FRAME_END = b"\r\n\r\n"  # Google's separator; both SDKs also read LF


# ------------------------------------------------------------------------------------------ signatures


def thought_signature(details: list[dict[str, Any]]) -> str:
    """Another provider's reasoning details as a thought signature of ours."""
    return base64.b64encode(SIGNATURE_MAGIC + _encode(details)).decode()


def signature_details(signature: str) -> list[dict[str, Any]] | None:
    """The reasoning details in a signature of ours; None for anyone else's (Google's)."""
    if not signature.startswith(SIGNATURE_PREFIX):
        return None
    try:
        details = msgspec.json.decode(base64.b64decode(signature, validate=True)[len(SIGNATURE_MAGIC):])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        details = None
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
        raise invalid("A thoughtSignature issued by this gateway was altered; send it back exactly as received.",
                      param="thoughtSignature")
    return details


def _google_signature(call: dict[str, Any]) -> str | None:
    value = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
    return value if isinstance(value, str) and value else None


def _attach(parts: list[dict[str, Any]], signature: str) -> None:
    """A signature on the first function call without one, else on the last text, else on its own part."""
    for part in parts:
        if "functionCall" in part and "thoughtSignature" not in part:
            part["thoughtSignature"] = signature
            return
    for part in reversed(parts):
        if "text" in part and not part.get("thought") and "thoughtSignature" not in part:
            part["thoughtSignature"] = signature
            return
    parts.append({"text": "", "thoughtSignature": signature})


def sign(parts: list[dict[str, Any]], details: list[dict[str, Any]]) -> None:
    """Put the answer's reasoning details on its parts: Google's signatures where they belong, everyone
    else's signed or encrypted reasoning in one signature of ours."""
    by_call: dict[str, str] = {}
    loose: list[str] = []
    ours: list[dict[str, Any]] = []
    for detail in details:
        if detail.get("format") == GOOGLE_FORMAT:
            if detail.get("type") != "reasoning.encrypted" or not detail.get("data"):
                continue  # Gemini's thought summaries are text parts already
            if detail.get("id"):
                by_call[str(detail["id"])] = detail["data"]
            else:
                loose.append(detail["data"])
        elif detail.get("signature") or detail.get("type") == "reasoning.encrypted":
            ours.append(detail)  # what its provider verifies; unsigned reasoning text need not travel back
    for part in parts:
        call = part.get("functionCall")
        if call is not None and "thoughtSignature" not in part and by_call.get(call.get("id")):
            part["thoughtSignature"] = by_call[call["id"]]
    if ours:
        _attach(parts, thought_signature(ours))
    for signature in loose:
        _attach(parts, signature)


# --------------------------------------------------------------------------------------------- bodies


def usage_metadata(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Canonical usage as Gemini counts it: thoughts apart from the answer's tokens."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    thoughts = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    out: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": max(0, completion - thoughts),
                           "totalTokenCount": int(usage.get("total_tokens") or prompt + completion)}
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    if cached:
        out["cachedContentTokenCount"] = cached
    return out


def _arguments(text: Any) -> dict[str, Any] | None:
    if isinstance(text, dict):
        return text
    try:
        value = msgspec.json.decode(text or "{}")
    except (msgspec.DecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _thought_text(message: dict[str, Any], details: list[dict[str, Any]]) -> str:
    text = message.get("reasoning") or message.get("reasoning_content")
    if isinstance(text, str) and text:
        return text
    return "".join(d.get("text") or "" for d in details if d.get("type") == "reasoning.text")


def candidate_from_choice(choice: dict[str, Any], include_thoughts: bool) -> dict[str, Any]:
    message = choice.get("message") or {}
    details = joined_details(message.get("reasoning_details") or [])
    parts: list[dict[str, Any]] = []
    thoughts = _thought_text(message, details)
    if include_thoughts and thoughts:
        parts.append({"text": thoughts, "thought": True})
    if message.get("content"):
        parts.append({"text": message["content"]})
    finish = FINISH_REASONS.get(choice.get("finish_reason") or "stop", "OTHER")
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        args = _arguments(function.get("arguments"))
        if args is None:  # a model's unparsable arguments: what Gemini reports as a malformed call
            finish = "MALFORMED_FUNCTION_CALL"
            continue
        part: dict[str, Any] = {"functionCall": {"id": call.get("id"), "name": function.get("name"), "args": args}}
        if signature := _google_signature(call):
            part["thoughtSignature"] = signature
        parts.append(part)
    sign(parts, details)
    if not parts:
        parts.append({"text": ""})
    return {"content": {"role": "model", "parts": parts}, "finishReason": finish,
            "index": int(choice.get("index") or 0)}


def response_from_completion(completion: dict[str, Any], include_thoughts: bool) -> dict[str, Any]:
    return {
        "candidates": [candidate_from_choice(c, include_thoughts) for c in completion.get("choices") or ()],
        "usageMetadata": usage_metadata(completion.get("usage")),
        "modelVersion": completion.get("model"),
        "responseId": completion.get("id"),
    }


def error_body(status: int, envelope: bytes) -> dict[str, Any]:
    error_type, message = envelope_parts(envelope)
    return {"error": {"code": status, "message": message, "status": RPC_STATUS.get(status, "UNKNOWN")},
            "error_type": error_type}


# --------------------------------------------------------------------------------------------- stream


class _Candidate:
    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}  # canonical tool-call index → id, name, arguments, signature
        self.details: list[Any] = []
        self.finish: str | None = None


class GeminiStream:
    """Canonical chunks → ``data: GenerateContentResponse`` frames. Text goes out as it arrives; function
    calls, signatures, ``finishReason`` and ``usageMetadata`` in the last frame."""

    keepalive = b"\r\n"

    def __init__(self, include_thoughts: bool) -> None:
        self.include_thoughts = include_thoughts
        self.candidates: dict[int, _Candidate] = {}
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.id: str | None = None

    def _frame(self, response: dict[str, Any]) -> bytes:
        response["modelVersion"] = self.model
        response["responseId"] = self.id
        return b"data: " + _encode(response) + FRAME_END

    def frames(self, event: Event) -> bytes:
        if event.native:
            return event.data
        out: list[bytes] = []
        for chunk in canonical_chunks(event.data):
            self.model = chunk.get("model") or self.model
            self.id = chunk.get("id") or self.id
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                index = int(choice.get("index") or 0)
                parts = self._delta(self.candidates.setdefault(index, _Candidate()), choice)
                if parts:
                    out.append(self._frame({"candidates": [{"content": {"role": "model", "parts": parts},
                                                            "index": index}]}))
        if event.kind == "done":
            out.append(self._last())
        return b"".join(out)

    def _delta(self, candidate: _Candidate, choice: dict[str, Any]) -> list[dict[str, Any]]:
        delta = choice.get("delta") or {}
        if choice.get("finish_reason"):
            candidate.finish = choice["finish_reason"]
        parts: list[dict[str, Any]] = []
        details = delta.get("reasoning_details") or []
        candidate.details.extend(details)
        thought = delta.get("reasoning") or delta.get("reasoning_content")
        if not thought:
            thought = "".join(d.get("text") or "" for d in details
                              if isinstance(d, dict) and d.get("type") == "reasoning.text")
        if thought and self.include_thoughts:
            parts.append({"text": thought, "thought": True})
        if delta.get("content"):
            parts.append({"text": delta["content"]})
        for call in delta.get("tool_calls") or ():
            entry = candidate.calls.setdefault(int(call.get("index") or 0), {"arguments": ""})
            function = call.get("function") or {}
            if call.get("id"):
                entry["id"] = call["id"]
            if function.get("name"):
                entry["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                entry["arguments"] += function["arguments"]
            if signature := _google_signature(call):
                entry["signature"] = signature
        return parts

    def _last(self) -> bytes:
        candidates = []
        for index, candidate in sorted((self.candidates or {0: _Candidate()}).items()):
            parts: list[dict[str, Any]] = []
            finish = FINISH_REASONS.get(candidate.finish or "stop", "OTHER")
            for _, call in sorted(candidate.calls.items()):
                args = _arguments(call["arguments"])
                if args is None:
                    finish = "MALFORMED_FUNCTION_CALL"
                    continue
                part: dict[str, Any] = {"functionCall": {"id": call.get("id"), "name": call.get("name"), "args": args}}
                if call.get("signature"):
                    part["thoughtSignature"] = call["signature"]
                parts.append(part)
            sign(parts, joined_details(candidate.details))
            candidates.append({"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": index})
        return self._frame({"candidates": candidates, "usageMetadata": usage_metadata(self.usage)})

    def error(self, status: int, envelope: bytes) -> bytes:
        return _encode(error_body(status, envelope)) + b"\n"


class GeminiGenerate:
    """The wire format of one request (whether to show thoughts is the request's own setting)."""

    def __init__(self, include_thoughts: bool = False) -> None:
        self.include_thoughts = include_thoughts

    def error_body(self, status: int, envelope: bytes) -> bytes:
        return _encode(error_body(status, envelope))

    def result(self, event: Event) -> bytes:
        if event.native:
            return event.data
        return _encode(response_from_completion(msgspec.json.decode(event.data), self.include_thoughts))

    def stream(self) -> GeminiStream:
        return GeminiStream(self.include_thoughts)


GEMINI_GENERATE = GeminiGenerate()  # refusals before the request is read
