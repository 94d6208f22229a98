"""Google Gemini's native API (``generativelanguage.googleapis.com/v1beta``), translated to and from OpenAI shapes.

Gemini differs from OpenAI in ways that break naive translation, all handled in this module and its two
neighbours (``gemini_request.py``: messages and options; ``gemini_schema.py``: tool schemas) and nowhere else:

- roles are ``user``/``model``; system text goes to ``systemInstruction``; tool results are
  ``functionResponse`` parts in a user turn and must carry the function's *name*, not a call id;
- function calls have no ids: we synthesise them and look names up again from the conversation;
- tool parameter schemas are an OpenAPI subset: JSON-Schema keys it does not know make the request fail,
  so schemas are cleaned (refs inlined, unsupported keys dropped);
- Gemini 3 attaches a ``thoughtSignature`` to function calls that must come back on the next turn: it
  travels in ``tool_calls[].extra_content.google.thought_signature`` (the shape Google's own OpenAI
  endpoint uses);
- a function call ends with ``STOP``; ``tool_calls`` is derived from the parts;
- streams are ``data:``-only SSE with no terminator, and old models repeat ``finishReason`` on every
  chunk, so the finishing chunk is emitted at the end of the stream, not when a reason is first seen;
- a bad key is HTTP 400 ``API_KEY_INVALID``, not 401.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import msgspec

from router.media import GEMINI_ASPECT
from workers.providers import reasoning
from workers.providers.base import (
    RequestSpec,
    Upstream,
    UpstreamError,
    classify_status,
    path_segment,
    malformed,
    retry_after_seconds,
)
from workers.providers.gemini_request import (
    build_contents,
    function_declarations,
    generation_config,
    tool_config,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
}
# Reasons that mean the model's function call is unusable: a visible error, never a silent "stop".
_BROKEN_CALL_REASONS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"})

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FORMAT = "google-gemini-v1"  # reasoning_details format of Gemini thoughts


# ---------------------------------------------------------------- URLs and headers


def api_root(up: Upstream) -> str:
    """``{base}/v1beta``, whether the configured base URL already ends in ``/v1beta`` or not."""
    base = (up.base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1beta"):
        base = base[: -len("/v1beta")]
    return base + "/v1beta"


def model_url(up: Upstream, model: str, method: str) -> str:
    """``{root}/models/{model}:{method}``, the model id escaped into one segment (``path_segment``: with a
    configured price for ``google/*`` a client chooses it, and ``x:delete?`` must not name another method)."""
    name = model[len("models/"):] if model.startswith("models/") else model
    return f"{api_root(up)}/models/{path_segment(name)}:{method}"


def gemini_headers(up: Upstream) -> dict[str, str]:
    """The key goes in ``x-goog-api-key`` (what Google's SDK sends), unless another header is configured."""
    headers = dict(up.headers)
    headers["content-type"] = "application/json"
    if up.api_key and up.auth != "none":
        header = "x-goog-api-key" if up.auth in ("bearer", "x-goog-api-key") else up.auth
        headers[header] = up.api_key
    return headers


# ---------------------------------------------------------------- responses


def new_call_id() -> str:
    """Unique across responses and rounds (ids restarting at 0 each response collide in long chats)."""
    return "call_" + secrets.token_hex(12)


def _tool_call(part: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    call = part["functionCall"]
    given = call.get("id")
    call_out: dict[str, Any] = {
        "id": given if isinstance(given, str) and _SAFE_ID.match(given) else new_call_id(),
        "type": "function",
        "function": {"name": call.get("name", ""),
                     "arguments": msgspec.json.encode(call.get("args") or {}).decode()},
    }
    if index is not None:
        call_out = {"index": index, **call_out}
    if part.get("thoughtSignature"):
        call_out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call_out


def reasoning_details(thoughts: str, calls: list[dict[str, Any]], text_signatures: list[str],
                      first_signature: int = 1) -> list[dict[str, Any]]:
    """Thought text (index 0) and thought signatures (one index each, a call's carrying its ``id``), the way
    OpenRouter returns them, so clients that keep ``reasoning_details`` round-trip Gemini's signatures."""
    details = [reasoning.text_detail(thoughts, FORMAT, 0)] if thoughts else []
    n = first_signature
    for call in calls:
        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if signature:
            details.append({**reasoning.encrypted_detail(signature, FORMAT, n), "id": call["id"]})
            n += 1
    for signature in text_signatures:
        details.append(reasoning.encrypted_detail(signature, FORMAT, n))
        n += 1
    return details


def _text_signatures(parts: list[dict[str, Any]]) -> list[str]:
    """Signatures Gemini 3 puts on answer text parts (not on function calls)."""
    return [p["thoughtSignature"] for p in parts if isinstance(p, dict) and "functionCall" not in p
            and isinstance(p.get("thoughtSignature"), str) and p["thoughtSignature"]]


def _split_parts(parts: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    """(answer text, thought text, functionCall parts)."""
    text, thoughts, calls = [], [], []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if "functionCall" in part:
            calls.append(part)
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thoughts), calls


def finish_reason(raw: str | None, has_calls: bool) -> str:
    if raw in _BROKEN_CALL_REASONS:
        raise UpstreamError(
            502, f"Gemini returned an unusable function call (finishReason {raw})",
            retryable=False, fallback=True, code=raw,
        )
    if has_calls and raw in (None, "STOP", "TOO_MANY_TOOL_CALLS"):
        return "tool_calls"
    return _FINISH_REASONS.get(raw or "STOP", "stop")


def usage(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(meta, dict):
        return None
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
    }
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    if meta.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": int(meta["cachedContentTokenCount"])}
    return out


def _choice(candidate: dict[str, Any], position: int) -> dict[str, Any]:
    parts = (candidate.get("content") or {}).get("parts") or []
    text, thoughts, calls = _split_parts(parts)
    message: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None}
    tool_calls = [_tool_call(p) for p in calls]
    if thoughts:
        message["reasoning"] = thoughts
    details = reasoning_details(thoughts, tool_calls, _text_signatures(parts))
    if details:
        message["reasoning_details"] = details
    if calls:
        message["tool_calls"] = tool_calls
    return {
        "index": candidate.get("index", position),
        "message": message,
        "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)),
        "logprobs": None,
    }


def _blocked_choice() -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter",
            "logprobs": None}


# ---------------------------------------------------------------- errors


def parse_retry_delay(value: Any) -> float | None:
    """google.protobuf.Duration JSON (``"59s"``, ``"1.5s"``) → seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(0.0, float(value[:-1]))
        except ValueError:
            return None
    return None


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return {"message": body.decode("utf-8", "replace").strip()[:500]}
    if isinstance(data, list) and data:  # streamGenerateContent without alt=sse wraps errors in an array
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else {}


def classify_error(status: int, err: dict[str, Any], headers: dict[str, str] | None = None) -> UpstreamError:
    """A Gemini ``error`` object (from an HTTP error or inside a stream) → ``UpstreamError``."""
    message = str(err.get("message") or f"Gemini returned HTTP {status}")
    rpc_status = err.get("status")
    reasons, retry_delay = set(), None
    for detail in err.get("details") or ():
        if isinstance(detail, dict):
            if detail.get("reason"):
                reasons.add(str(detail["reason"]))
            retry_delay = retry_delay if retry_delay is not None else parse_retry_delay(detail.get("retryDelay"))
    retry_after = retry_delay if retry_delay is not None else retry_after_seconds(headers or {})
    if "API_KEY_INVALID" in reasons or status in (401, 403):
        # The gateway's key, not the client's: never a 401 the client would blame on its own key.
        reason = "API_KEY_INVALID" if "API_KEY_INVALID" in reasons else str(rpc_status or status)
        return UpstreamError(status, f"Gemini rejected the gateway's credentials ({reason})",
                             retryable=False, fallback=True, error_type="upstream_error", code=reason)
    if status == 400 and rpc_status == "FAILED_PRECONDITION":  # e.g. "User location is not supported"
        return UpstreamError(status, message, retryable=False, fallback=True, code=rpc_status)
    if status == 400 and "token count" in message and "exceeds" in message:
        return UpstreamError(status, message, retryable=False, fallback=False, error_type="invalid_request",
                             code="context_length_exceeded")
    retryable, fallback, error_type = classify_status(status)
    return UpstreamError(status, message, retryable=retryable, fallback=fallback, error_type=error_type,
                         retry_after=retry_after, code=str(rpc_status) if rpc_status else None)


def inband_error(err: Any) -> UpstreamError:
    err = err if isinstance(err, dict) else {"message": str(err)}
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 502
    return classify_error(status, err)


# ---------------------------------------------------------------- the adapter


class GeminiAdapter:
    """The ``gemini`` kind. Stateless: one instance serves every request."""

    # -- image output (``POST /images/generations`` to a Gemini image model) -----------------------------

    def images_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        """``generateContent`` asking for an image: the prompt as the user's turn, the size as the nearest
        aspect ratio (``router/media.py`` ``GEMINI_ASPECT``; ``auto`` or none: the model's default)."""
        config: dict[str, Any] = {"responseModalities": ["IMAGE"]}
        ratio = GEMINI_ASPECT.get(str(body.get("size")))
        if ratio:
            config["imageConfig"] = {"aspectRatio": ratio}
        payload = {"contents": [{"role": "user", "parts": [{"text": body.get("prompt") or ""}]}],
                   "generationConfig": config}
        return RequestSpec("POST", model_url(up, model, "generateContent"), headers=gemini_headers(up),
                           content=msgspec.json.encode(payload))

    def images_response(self, data: dict[str, Any]) -> dict[str, Any]:
        """The answer's image parts as OpenAI's ``ImagesResponse`` (``b64_json``), its usage as gpt-image's."""
        if data.get("error"):
            raise inband_error(data["error"])
        if (data.get("promptFeedback") or {}).get("blockReason"):
            raise UpstreamError(400, f"Gemini blocked the prompt ({data['promptFeedback']['blockReason']}).",
                                retryable=False, fallback=False, error_type="invalid_request", param="prompt")
        images, said = [], []
        for candidate in data.get("candidates") or ():
            for part in (candidate.get("content") or {}).get("parts") or ():
                inline = part.get("inlineData") or {}
                if str(inline.get("mimeType", "")).startswith("image/") and inline.get("data"):
                    images.append({"b64_json": inline["data"]})
                elif isinstance(part.get("text"), str) and not part.get("thought"):
                    said.append(part["text"])
        if not images:
            raise UpstreamError(400, "Gemini answered without an image" + (f": {' '.join(said)[:300]}" if said else "."),
                                retryable=False, fallback=True, error_type="invalid_request", param="prompt")
        meta = data.get("usageMetadata") or {}
        usage = {"input_tokens": meta.get("promptTokenCount") or 0, "output_tokens": meta.get("candidatesTokenCount") or 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return {"created": int(time.time()), "data": images, "usage": usage}

    def chat_request(self, up: Upstream, model: str, body: dict[str, Any], stream: bool) -> RequestSpec:
        dummy = not up.quirks.get("no_dummy_thought_signature")
        system, contents = build_contents(list(body.get("messages") or ()), dummy_signature=dummy)
        payload: dict[str, Any] = {"contents": contents}
        if system:
            payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config = generation_config(body, model)
        if config:
            payload["generationConfig"] = config
        declarations = function_declarations(body.get("tools"))
        if declarations:
            payload["tools"] = [{"functionDeclarations": declarations}]
            choice = tool_config(body.get("tool_choice"))
            if choice:
                payload["toolConfig"] = choice
        headers = gemini_headers(up)
        if stream:
            headers["accept"] = "text/event-stream"
            url = model_url(up, model, "streamGenerateContent") + "?alt=sse"
        else:
            url = model_url(up, model, "generateContent")
        return RequestSpec("POST", url, headers=headers, content=msgspec.json.encode(payload))

    def chat_response(self, data: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        if data.get("error"):
            raise inband_error(data["error"])
        candidates = data.get("candidates")
        if not candidates:
            if (data.get("promptFeedback") or {}).get("blockReason"):
                choices = [_blocked_choice()]
            else:
                raise malformed("Gemini returned no candidates")
        else:
            choices = [_choice(c, i) for i, c in enumerate(candidates) if isinstance(c, dict)]
        result: dict[str, Any] = {"object": "chat.completion", "choices": choices}
        found = usage(data.get("usageMetadata"))
        if found:
            result["usage"] = found
        return result

    def stream_translator(self, request: dict[str, Any] | None = None) -> "GeminiStreamTranslator":
        return GeminiStreamTranslator()

    def error(self, status: int, headers: dict[str, str], body: bytes) -> UpstreamError:
        return classify_error(status, _error_object(body), headers)

    def embeddings_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        """An OpenAI embeddings body → ``batchEmbedContents``. Gemini embeds text only, not token arrays."""
        value = body.get("input")
        texts = [value] if isinstance(value, str) else list(value or ())
        if not all(isinstance(t, str) for t in texts):
            raise UpstreamError(400, "Gemini embeds text only; token-array inputs are not supported.",
                                retryable=False, fallback=True, error_type="invalid_request", param="input")
        return embeddings_request(up, model, texts, body.get("dimensions"))

    def embeddings_response(self, data: Any) -> tuple[list[Any], dict[str, Any] | None]:
        """(float vectors in input order, no usage: Gemini reports no token counts for embeddings)."""
        if isinstance(data, dict) and data.get("error"):
            raise inband_error(data["error"])
        return embeddings_response(data), None


class GeminiStreamTranslator:
    """Gemini SSE events (each a whole ``GenerateContentResponse`` with only new parts) → OpenAI chunks."""

    def __init__(self) -> None:
        self.finish: dict[int, str] = {}  # choice index → latest raw finishReason
        self.calls: dict[int, int] = {}  # choice index → tool calls seen so far (next 0-based index)
        self.signatures = 0  # thought signatures sent so far (each its own reasoning_details index)
        self.usage: dict[str, Any] | None = None

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if not data.strip():
            return []
        try:
            response = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise malformed("Gemini sent a malformed stream chunk") from None
        if not isinstance(response, dict):
            return []
        if response.get("error"):
            raise inband_error(response["error"])
        if isinstance(response.get("usageMetadata"), dict):
            self.usage = usage(response["usageMetadata"])
        candidates = response.get("candidates") or []
        if not candidates and (response.get("promptFeedback") or {}).get("blockReason"):
            self.finish[0] = "SAFETY"
        chunks = []
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index", position)
            chunk = self._delta_chunk(index, (candidate.get("content") or {}).get("parts") or [])
            if chunk:
                chunks.append(chunk)
            raw = candidate.get("finishReason")
            if raw:
                if raw in _BROKEN_CALL_REASONS:
                    finish_reason(raw, True)  # raises
                self.finish[index] = raw
        return chunks

    def _delta_chunk(self, index: int, parts: list[dict[str, Any]]) -> dict[str, Any] | None:
        text, thoughts, calls = _split_parts(parts)
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        tool_calls = []
        if calls:
            first = self.calls.get(index, 0)
            tool_calls = delta["tool_calls"] = [_tool_call(p, first + k) for k, p in enumerate(calls)]
            self.calls[index] = first + len(calls)
        if thoughts:
            delta["reasoning"] = thoughts
        details = reasoning_details(thoughts, tool_calls, _text_signatures(parts), 1 + self.signatures)
        if details:
            self.signatures += len(details) - (1 if thoughts else 0)
            delta["reasoning_details"] = details
        if not delta:
            return None
        return {"object": "chat.completion.chunk", "choices": [{"index": index, "delta": delta, "finish_reason": None}]}

    def close(self) -> list[dict[str, Any]]:
        if not self.finish:
            raise malformed("Gemini stream ended before a finishReason")
        choices = [
            {"index": index, "delta": {}, "finish_reason": finish_reason(raw, bool(self.calls.get(index)))}
            for index, raw in sorted(self.finish.items())
        ]
        chunk: dict[str, Any] = {"object": "chat.completion.chunk", "choices": choices}
        if self.usage:
            chunk["usage"] = self.usage
        return [chunk]


# ---------------------------------------------------------------- embeddings


def embeddings_request(up: Upstream, model: str, inputs: list[str], dimensions: int | None) -> RequestSpec:
    """OpenAI-style embedding inputs → one ``batchEmbedContents`` call."""
    name = model[len("models/"):] if model.startswith("models/") else model
    requests = []
    for text in inputs:
        item: dict[str, Any] = {"model": f"models/{name}", "content": {"parts": [{"text": text}]}}
        if dimensions:
            item["outputDimensionality"] = dimensions
        requests.append(item)
    return RequestSpec("POST", model_url(up, name, "batchEmbedContents"), headers=gemini_headers(up),
                       content=msgspec.json.encode({"requests": requests}))


def embeddings_response(data: dict[str, Any]) -> list[list[float]]:
    embeddings = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(embeddings, list):
        raise malformed("Gemini returned a body without embeddings")
    vectors = []
    for item in embeddings:
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list):
            raise malformed("Gemini returned an embedding without values")
        vectors.append([float(v) for v in values])
    return vectors
