"""Anthropic's native Messages API (``POST /v1/messages``), translated to and from OpenAI Chat Completions.

Anthropic differs from OpenAI in ways that break naive proxies, so each rule here answers a real failure:

- ``system`` is a top-level field, not a message; roles must alternate user/assistant, so tool results (a
  user turn in Anthropic's model) and a following user message are merged into one turn;
- ``max_tokens`` is required: the client's value, else the upstream's default for the model;
- ``tool_use.id`` must match ``^[a-zA-Z0-9_-]+$``: ids minted by other providers are rewritten
  deterministically (same input, same output) with a hash suffix so two ids never collapse into one;
- empty text blocks are rejected with a 400, so they are dropped (tool-call-only assistant turns send ``""``);
- the stream is named events (``message_start`` … ``message_stop``); tool-call deltas are re-keyed by a
  0-based count of tool blocks, since Anthropic's block index also counts text blocks;
- overload is HTTP 529 ``overloaded_error``, also sent in-band after a 200.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from workers.providers.base import (
    RequestSpec,
    Upstream,
    UpstreamError,
    classify_status,
    retry_after_seconds,
)
from workers.providers.openai_compat import auth_headers, join_url

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"

_TOOL_ID_OK = re.compile(r"[a-zA-Z0-9_-]+")
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_DATA_URL = re.compile(r"data:([^;,]+)((?:;[^;,]*)*?);base64,(.*)", re.DOTALL)

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

_PASS_THROUGH = ("temperature", "top_p", "top_k", "thinking", "service_tier")


def _invalid(message: str) -> UpstreamError:
    """A request Anthropic cannot express: the client's fault here, but another provider may still serve it."""
    return UpstreamError(400, message, retryable=False, fallback=True, error_type="invalid_request")


def sanitize_tool_id(raw: str) -> str:
    """A valid Anthropic tool id for ``raw``: unchanged if already valid, else cleaned plus a hash of ``raw``.

    Deterministic so a call id and its result's ``tool_call_id`` map to the same value; the hash keeps
    ``call.1`` and ``call:1`` distinct after both become ``call_1``.
    """
    if raw and _TOOL_ID_OK.fullmatch(raw):
        return raw
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]
    cleaned = _TOOL_ID_BAD_CHARS.sub("_", raw)[:40]
    return f"{cleaned}_{digest}" if cleaned else f"toolu_{digest}"


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
    headers["anthropic-version"] = up.api_version or DEFAULT_VERSION
    headers["content-type"] = "application/json"
    return headers


# ---------------------------------------------------------------- request: content parts


def _text_of(content: Any) -> str:
    """The plain text of a string or an array of text parts (system messages, tool results)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _text_block(text: str, part: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if not text:
        return None  # Anthropic rejects empty text blocks
    block: dict[str, Any] = {"type": "text", "text": text}
    if part and part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise _invalid("image_url part without a url")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if not match:
            raise _invalid("image data URLs must be base64-encoded")
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(3)}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise _invalid("image_url must be a data: or http(s) URL")
    return {"type": "image", "source": source}


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    file = part.get("file") or {}
    match = _DATA_URL.fullmatch(str(file.get("file_data") or ""))
    if not match or match.group(1) != "application/pdf":
        raise _invalid("only base64 PDF file parts can be sent to Anthropic")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": match.group(3)}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (string or parts) → Anthropic blocks, empty text dropped."""
    if content is None:
        return []
    if isinstance(content, str):
        block = _text_block(content)
        return [block] if block else []
    if not isinstance(content, list):
        raise _invalid("message content must be a string or an array of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            block = _text_block(part.get("text") or part.get("refusal") or "", part)
            if block:
                blocks.append(block)
        elif kind == "image_url":
            blocks.append(_image_block(part))
        elif kind == "file":
            blocks.append(_file_block(part))
        else:
            raise _invalid(f"content part type {kind!r} is not supported by Anthropic")
    return blocks


# ---------------------------------------------------------------- request: messages


def _tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments → the object Anthropic wants; anything else is wrapped, never dropped."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = msgspec.json.decode(arguments) if isinstance(arguments, str | bytes) else arguments
    except msgspec.DecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _content_blocks(message.get("content"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append({
            "type": "tool_use",
            "id": sanitize_tool_id(str(call.get("id") or "")),
            "name": function.get("name") or "",
            "input": _tool_input(function.get("arguments")),
        })
    return blocks


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": sanitize_tool_id(str(message.get("tool_call_id") or ""))}
    content = message.get("content")
    if isinstance(content, list):
        parts = [b for b in _content_blocks(content) if b["type"] in ("text", "image")]
        if parts:
            block["content"] = parts
    elif isinstance(content, str) and content:
        block["content"] = content
    return block


def _append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add a turn, merging into the previous one of the same role so roles alternate."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _tool_results_first(turn: dict[str, Any]) -> dict[str, Any]:
    """Anthropic wants a user turn's tool_result blocks before any other block."""
    if turn["role"] == "user":
        turn["content"].sort(key=lambda b: b.get("type") != "tool_result")  # stable: keeps order within each group
    return turn


def translate_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages → (system blocks, alternating Anthropic turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            block = _text_block(_text_of(message.get("content")), _cache_part(message.get("content")))
            if block:
                system.append(block)
        elif role == "user":
            _append_turn(turns, "user", _content_blocks(message.get("content")))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message))
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result_block(message)])
        else:
            raise _invalid(f"message role {role!r} is not supported by Anthropic")
    return system, [_tool_results_first(t) for t in turns]


def _cache_part(content: Any) -> dict[str, Any] | None:
    """The last part carrying ``cache_control`` in a system message, so prompt caching survives the join."""
    if isinstance(content, list):
        marked = [p for p in content if isinstance(p, dict) and p.get("cache_control")]
        return marked[-1] if marked else None
    return None


def _system_field(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    if not blocks:
        return None
    if any("cache_control" in b for b in blocks):
        return blocks
    return "\n\n".join(b["text"] for b in blocks)


# ---------------------------------------------------------------- request: tools and options


def translate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type", "function") != "function":
            raise _invalid(f"tool type {tool.get('type')!r} is not supported by Anthropic")
        function = tool.get("function") or {}
        entry: dict[str, Any] = {
            "name": function.get("name") or "",
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def translate_tool_choice(choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    """OpenAI tool_choice (+ parallel_tool_calls) → Anthropic's ``{"type": auto|any|tool|none}``."""
    if choice is None:
        result: dict[str, Any] | None = {"type": "auto"} if parallel_tool_calls is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}  # takes no disable_parallel_tool_use
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _invalid("unsupported tool_choice")
    if result is not None and parallel_tool_calls is False:
        result["disable_parallel_tool_use"] = True
    return result


def _max_tokens(up: Upstream, body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return up.default_max_tokens


def _options(payload: dict[str, Any], body: dict[str, Any]) -> None:
    """Sampling, stop sequences and the end-user id."""
    for name in _PASS_THROUGH:
        if body.get(name) is not None:
            payload[name] = body[name]
    if isinstance(payload.get("temperature"), int | float):
        payload["temperature"] = min(float(payload["temperature"]), 1.0)  # OpenAI allows 0–2, Anthropic 0–1
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        payload["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        payload["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
    if isinstance(body.get("user"), str) and body["user"]:
        payload["metadata"] = {"user_id": body["user"]}


def messages_payload(up: Upstream, model: str, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Anthropic request body for an OpenAI chat body (exposed for tests)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise _invalid("n > 1 is not supported by Anthropic")
    system, turns = translate_messages(body.get("messages") or [])
    payload: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(up, body), "messages": turns}
    system_field = _system_field(system)
    if system_field is not None:
        payload["system"] = system_field
    if body.get("tools"):
        payload["tools"] = translate_tools(body["tools"])
        choice = translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            payload["tool_choice"] = choice
    _options(payload, body)
    if stream:
        payload["stream"] = True
    return payload


# ---------------------------------------------------------------- responses


def usage_of(input_tokens: int, output_tokens: int, cache_read: int = 0, cache_creation: int = 0) -> dict[str, Any]:
    """OpenAI usage: Anthropic's ``input_tokens`` excludes cached tokens, OpenAI's ``prompt_tokens`` includes them."""
    prompt = input_tokens + cache_read + cache_creation
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": output_tokens,
                             "total_tokens": prompt + output_tokens}
    if cache_read:
        usage["prompt_tokens_details"] = {"cached_tokens": cache_read}
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

    def chat_response(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("type") == "error":
            error_type, message = _error_parts(data, "upstream error")
            raise error_from_type(error_type, message)
        if not isinstance(data.get("content"), list):
            raise UpstreamError(502, "upstream returned a message without content", retryable=True)
        text, reasoning, tool_calls = [], [], []
        for block in data["content"]:
            kind = block.get("type")
            if kind == "text":
                text.append(block.get("text") or "")
            elif kind == "thinking":
                reasoning.append(block.get("thinking") or "")
            elif kind == "tool_use":
                tool_calls.append({"id": block.get("id"), "type": "function", "function": {
                    "name": block.get("name"),
                    "arguments": msgspec.json.encode(block.get("input") or {}).decode()}})
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _finish_reason(data.get("stop_reason")) or "stop"}],
            "usage": usage_of(*_usage_from(data.get("usage"))),
        }

    def stream_translator(self) -> "AnthropicStreamTranslator":
        return AnthropicStreamTranslator()

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


# ---------------------------------------------------------------- streams


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


class AnthropicStreamTranslator:
    """Anthropic's named events → OpenAI chunks. Holds one stream's state (tool indices, prompt tokens)."""

    def __init__(self) -> None:
        self.usage_in = (0, 0, 0)  # input, cache_read, cache_creation from message_start
        self.tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index
        self.finished = False  # message_stop was seen

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if not data:
            return []
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream sent a malformed stream event", retryable=True) from None
        if not isinstance(payload, dict):
            return []
        handler = _HANDLERS.get(str(event or payload.get("type")))  # ping and unknown events: nothing
        return handler(self, payload) if handler else []

    def close(self) -> list[dict[str, Any]]:
        if not self.finished:
            raise UpstreamError(502, "upstream stream ended before message_stop", retryable=True)
        return []

    def _on_message_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        # Nothing is emitted yet: a stream that fails before real content can still be retried elsewhere.
        input_tokens, _, cache_read, cache_creation = _usage_from((payload.get("message") or {}).get("usage"))
        self.usage_in = (input_tokens, cache_read, cache_creation)
        return []

    def _on_content_block_start(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        block = payload.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [_chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        k = self.tool_index[int(payload.get("index", -1))] = len(self.tool_index)
        initial = block.get("input")
        arguments = msgspec.json.encode(initial).decode() if isinstance(initial, dict) and initial else ""
        return [_chunk({"tool_calls": [{"index": k, "id": block.get("id"), "type": "function",
                                        "function": {"name": block.get("name"), "arguments": arguments}}]})]

    def _on_content_block_delta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [_chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [_chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            k = self.tool_index.get(int(payload.get("index", -1)))
            if k is None:
                raise UpstreamError(502, "upstream sent tool input for an unknown block", retryable=True)
            return [_chunk({"tool_calls": [{"index": k, "function": {"arguments": delta["partial_json"]}}]})]
        return []

    def _on_message_delta(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        finish = _finish_reason((payload.get("delta") or {}).get("stop_reason")) or "stop"
        late_input, output, late_read, late_creation = _usage_from(payload.get("usage"))
        input_tokens, cache_read, cache_creation = self.usage_in
        chunk = _chunk({}, finish)
        # message_delta's usage is cumulative; newer API versions repeat the input counts there too.
        chunk["usage"] = usage_of(max(input_tokens, late_input), output,
                                  max(cache_read, late_read), max(cache_creation, late_creation))
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
