"""Anthropic's native Messages API (``POST /v1/messages``), translated to and from OpenAI Chat Completions.

Anthropic differs from OpenAI in ways that break naive proxies, so each rule here (and in
``anthropic_request.py``, which builds the request) answers a real failure:

- ``system`` is a top-level field, not a message; roles must alternate user/assistant, so tool results (a
  user turn in Anthropic's model) and a following user message are merged into one turn;
- ``max_tokens`` is required: the client's value, else the upstream's default for the model;
- ``tool_use.id`` must match ``^[a-zA-Z0-9_-]+$``: ids minted by other providers are rewritten
  deterministically (same input, same output) with a hash suffix so two ids never collapse into one;
- empty text blocks are rejected with a 400, so they are dropped (tool-call-only assistant turns send ``""``);
- the stream is named events (``message_start`` … ``message_stop``); tool-call deltas are re-keyed by a
  0-based count of tool blocks, since Anthropic's block index also counts text blocks;
- overload is HTTP 529 ``overloaded_error``, also sent in-band after a 200;
- thinking blocks carry a ``signature`` (streamed last, as ``signature_delta``) and may be
  ``redacted_thinking``: both reach the client in ``reasoning_details`` so they can be sent back intact;
- a JSON answer forced through ``JSON_TOOL`` is returned as ``message.content``, not as a tool call;
- the client's ``anthropic-beta`` header is forwarded, joined with any the operator configured.
"""

from __future__ import annotations

from typing import Any

import msgspec

from workers.providers.base import (
    RequestSpec,
    Upstream,
    UpstreamError,
    classify_status,
    malformed,
    retry_after_seconds,
)
from workers.providers import reasoning
from workers.providers.anthropic_request import FORMAT, JSON_TOOL, messages_payload, uses_json_tool
from workers.providers.openai_compat import auth_headers, join_url

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic's error types and the HTTP status each stands for (used for in-band stream errors).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}



def messages_url(base_url: str | None) -> str:
    """``{base}/v1/messages``, tolerating a configured base URL that already ends in ``/v1``."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v1"):
        return join_url(base, "messages")
    return join_url(base, "v1/messages")


def request_headers(up: Upstream) -> dict[str, str]:
    """Anthropic keys go in ``x-api-key``; config-declared providers default to ``bearer``, which means the same."""
    if up.auth in ("bearer", "x-api-key"):
        headers = dict(up.headers)
        if up.api_key:
            headers["x-api-key"] = up.api_key
    else:
        headers = auth_headers(up)
    betas = [b for b in (up.headers.get("anthropic-beta"), up.client_headers.get("anthropic-beta")) if b]
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    headers["anthropic-version"] = up.api_version or DEFAULT_VERSION
    headers["content-type"] = "application/json"
    return headers


# ---------------------------------------------------------------- responses


def usage_of(input_tokens: int, output_tokens: int, cache_read: int = 0, cache_creation: int = 0) -> dict[str, Any]:
    """OpenAI usage: Anthropic's ``input_tokens`` excludes cached tokens, OpenAI's ``prompt_tokens`` includes them."""
    prompt = input_tokens + cache_read + cache_creation
    return {"prompt_tokens": prompt, "completion_tokens": output_tokens, "total_tokens": prompt + output_tokens,
            "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_creation}}


def with_server_tools(usage: dict[str, Any], raw: Any) -> dict[str, Any]:
    """The canonical usage plus Anthropic's count of server tool uses billed per use (web searches), which
    ``Catalog.cost`` prices (router/forwarding.py ``PRICED_PER_USE``)."""
    uses = (raw.get("server_tool_use") or {}) if isinstance(raw, dict) else {}
    searches = uses.get("web_search_requests") if isinstance(uses, dict) else None
    if isinstance(searches, int) and searches > 0:
        usage["server_tool_use"] = {"web_search_requests": searches}
    return usage


def _usage_from(raw: Any) -> tuple[int, int, int, int]:
    raw = raw if isinstance(raw, dict) else {}
    return (int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0),
            int(raw.get("cache_read_input_tokens") or 0), int(raw.get("cache_creation_input_tokens") or 0))


def _finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), "stop")


def error_from_type(error_type: str, message: str, status: int | None = None,
                    headers: dict[str, str] | None = None) -> UpstreamError:
    """One classification for HTTP errors and in-band stream errors."""
    status = status or ERROR_TYPE_STATUS.get(error_type, 502)
    retryable, fallback, kind = classify_status(status)
    code = error_type or None
    if status == 402 or error_type == "billing_error" or "credit balance" in message.lower():
        retryable, fallback, kind = False, True, "upstream_error"  # our account's problem, not the client's
    elif error_type == "overloaded_error":
        retryable, fallback, kind = True, True, "upstream_error"
    elif "prompt is too long" in message.lower():
        code = "context_length_exceeded"
    return UpstreamError(status, message, retryable=retryable, fallback=fallback, error_type=kind,
                         retry_after=retry_after_seconds(headers or {}), code=code)


def _error_parts(data: Any, default: str) -> tuple[str, str]:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), str(err.get("message") or default)
    return "", default


class AnthropicAdapter:
    """The Adapter for ``kind = "anthropic"``; stateless, one instance serves every request."""

    def chat_request(self, up: Upstream, model: str, body: dict[str, Any], stream: bool) -> RequestSpec:
        payload = messages_payload(up, model, body, stream)
        headers = request_headers(up)
        if stream:
            headers["accept"] = "text/event-stream"
        return RequestSpec("POST", messages_url(up.base_url), headers=headers, content=msgspec.json.encode(payload))

    def chat_response(self, data: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        if data.get("type") == "error":
            error_type, message = _error_parts(data, "upstream error")
            raise error_from_type(error_type, message)
        if not isinstance(data.get("content"), list):
            raise malformed("upstream returned a message without content")
        json_tool = _json_tool(request)
        text, thoughts, details, tool_calls = [], [], [], []
        for block in data["content"]:
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text") or "")
            elif kind == "thinking":
                thoughts.append(block.get("thinking") or "")
                details.append(reasoning.text_detail(block.get("thinking") or "", FORMAT, len(details),
                                                     block.get("signature")))
            elif kind == "redacted_thinking":
                details.append(reasoning.encrypted_detail(block.get("data") or "", FORMAT, len(details)))
            elif kind == "tool_use" and json_tool and block.get("name") == JSON_TOOL:
                text.append(msgspec.json.encode(block.get("input") or {}).decode())
            elif kind == "tool_use":
                tool_calls.append({"id": block.get("id"), "type": "function", "function": {
                    "name": block.get("name"),
                    "arguments": msgspec.json.encode(block.get("input") or {}).decode()}})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
        if details:
            message["reasoning"] = "".join(thoughts)
            message["reasoning_details"] = details
        if tool_calls:
            message["tool_calls"] = tool_calls
        finish = _finish_reason(data.get("stop_reason")) or "stop"
        if json_tool and finish == "tool_calls" and not tool_calls:
            finish = "stop"
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": with_server_tools(usage_of(*_usage_from(data.get("usage"))), data.get("usage")),
        }

    def stream_translator(self, request: dict[str, Any] | None = None) -> "AnthropicStreamTranslator":
        return AnthropicStreamTranslator(request)

    def error(self, status: int, headers: dict[str, str], body: bytes) -> UpstreamError:
        default = f"upstream returned HTTP {status}"
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            data = None
        error_type, message = _error_parts(data, default)
        if data is None:
            message = body.decode("utf-8", "replace").strip()[:500] or default
        return error_from_type(error_type, message, status, headers)


def _json_tool(request: dict[str, Any] | None) -> bool:
    """Whether this request's answer comes as the input of the forced ``JSON_TOOL``."""
    return request is not None and uses_json_tool(str(request.get("model") or ""), request)


# ---------------------------------------------------------------- streams


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


class AnthropicStreamTranslator:
    """Anthropic's named events → OpenAI chunks. Holds one stream's state (tool indices, prompt tokens)."""

    def __init__(self, request: dict[str, Any] | None = None) -> None:
        self.usage_in = (0, 0, 0)  # input, cache_read, cache_creation from message_start
        self.tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index
        self.thinking_index: dict[int, int] = {}  # Anthropic block index → reasoning_details index
        self.json_blocks: set[int] = set()  # blocks of the forced JSON tool: their input is the answer
        self.json_tool = _json_tool(request)
        self.finished = False  # message_stop was seen

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if not data:
            return []
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise malformed("upstream sent a malformed stream event") from None
        if not isinstance(payload, dict):
            return []
        handler = _HANDLERS.get(str(event or payload.get("type")))  # ping and unknown events: nothing
        return handler(self, payload) if handler else []

    def close(self) -> list[dict[str, Any]]:
        if not self.finished:
            raise malformed("upstream stream ended before message_stop")
        return []

    def _on_message_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        # Nothing is emitted yet: a stream that fails before real content can still be retried elsewhere.
        input_tokens, _, cache_read, cache_creation = _usage_from((payload.get("message") or {}).get("usage"))
        self.usage_in = (input_tokens, cache_read, cache_creation)
        return []

    def _on_content_block_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        block = payload.get("content_block") or {}
        kind = block.get("type")
        at = int(payload.get("index", -1))
        if kind == "text" and block.get("text"):
            return [_chunk({"content": block["text"]})]
        if kind in ("thinking", "redacted_thinking"):
            k = self.thinking_index[at] = len(self.thinking_index)
            if kind == "redacted_thinking":
                return [_chunk({"reasoning_details": [reasoning.encrypted_detail(block.get("data") or "", FORMAT, k)]})]
            if block.get("thinking"):
                return [self._thought(k, block["thinking"])]
            return []
        if kind != "tool_use":
            return []
        if self.json_tool and block.get("name") == JSON_TOOL:
            self.json_blocks.add(at)
            return []
        k = self.tool_index[at] = len(self.tool_index)
        initial = block.get("input")
        arguments = msgspec.json.encode(initial).decode() if isinstance(initial, dict) and initial else ""
        return [_chunk({"tool_calls": [{"index": k, "id": block.get("id"), "type": "function",
                                        "function": {"name": block.get("name"), "arguments": arguments}}]})]

    def _thought(self, k: int, text: str) -> dict[str, Any]:
        return _chunk({"reasoning": text, "reasoning_details": [reasoning.text_detail(text, FORMAT, k)]})

    def _on_content_block_delta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        at = int(payload.get("index", -1))
        if kind == "text_delta" and delta.get("text"):
            return [_chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._thought(self.thinking_index.get(at, 0), delta["thinking"])]
        if kind == "signature_delta" and delta.get("signature"):
            detail = reasoning.text_detail("", FORMAT, self.thinking_index.get(at, 0), delta["signature"])
            return [_chunk({"reasoning_details": [detail]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            if at in self.json_blocks:
                return [_chunk({"content": delta["partial_json"]})]
            k = self.tool_index.get(at)
            if k is None:
                raise malformed("upstream sent tool input for an unknown block")
            return [_chunk({"tool_calls": [{"index": k, "function": {"arguments": delta["partial_json"]}}]})]
        return []

    def _on_message_delta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        finish = _finish_reason((payload.get("delta") or {}).get("stop_reason")) or "stop"
        if self.json_blocks and finish == "tool_calls" and not self.tool_index:
            finish = "stop"
        late_input, output, late_read, late_creation = _usage_from(payload.get("usage"))
        input_tokens, cache_read, cache_creation = self.usage_in
        chunk = _chunk({}, finish)
        # message_delta's usage is cumulative; newer API versions repeat the input counts there too.
        chunk["usage"] = with_server_tools(usage_of(max(input_tokens, late_input), output, max(cache_read, late_read),
                                                    max(cache_creation, late_creation)), payload.get("usage"))
        return [chunk]

    def _on_message_stop(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        return []

    def _on_error(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        error_type, message = _error_parts(payload, "upstream stream error")
        raise error_from_type(error_type, message)


_HANDLERS = {
    "message_start": AnthropicStreamTranslator._on_message_start,
    "content_block_start": AnthropicStreamTranslator._on_content_block_start,
    "content_block_delta": AnthropicStreamTranslator._on_content_block_delta,
    "message_delta": AnthropicStreamTranslator._on_message_delta,
    "message_stop": AnthropicStreamTranslator._on_message_stop,
    "error": AnthropicStreamTranslator._on_error,
}
