"""Anthropic Messages (``POST /v1/messages``): decoded into the canonical request, encoded back.

What Claude Code sends (see README "Claude Code") is accepted as the Messages API defines it: ``system``
as a string or blocks, content blocks ``text``/``image``/``document``/``tool_use``/``tool_result``/
``thinking``/``redacted_thinking``, ``tools`` with ``input_schema``, ``tool_choice``, ``thinking``
(``enabled`` with a budget, or ``adaptive``), ``output_config.effort``, and a ``system`` message in the
middle of ``messages``. Fields the canonical request has no place for (``context_management``, server
tools, ``container``…) are dropped for translated providers; an Anthropic upstream gets the client's
body itself (``Job.native``), so nothing is lost there.

The stream is Anthropic's event sequence: ``message_start``, then per block ``content_block_start``,
``content_block_delta`` (``text_delta``, ``input_json_delta``, ``thinking_delta``, ``signature_delta``),
``content_block_stop``, then ``message_delta`` (stop reason, usage) and ``message_stop``; a failure
after the first event is an ``error`` event. Errors use Anthropic's shape with our ``error_type`` beside.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from api.formats import CanonicalStream, envelope_parts, seal_details, shape_checked, sse, unseal_details
from common.wire import Event

_encode = msgspec.json.encode


# ---------------------------------------------------------------------------------------------- request


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class MessagesRequest(msgspec.Struct):
    """Validation of what the canonical translation relies on; the rest is read from the raw body."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None  # required by create, not by count_tokens
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    stream: bool | None = None
    # Read in this one decode because they may change the price (router/forwarding.py refuse_priced).
    service_tier: str | None = None
    container: Any = None
    mcp_servers: list[Any] | None = None

    def priced(self) -> dict[str, Any]:
        return {"service_tier": self.service_tier, "container": self.container, "mcp_servers": self.mcp_servers}


EFFORTS = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "max": "high"}
CLAUDE_FORMAT = "anthropic-claude-v1"


def _part(block: dict[str, Any]) -> dict[str, Any] | None:
    """A user content block as a canonical content part (None for blocks it has no place for)."""
    kind = block.get("type")
    part: dict[str, Any] | None = None
    if kind == "text":
        part = {"type": "text", "text": block.get("text") or ""}
    elif kind in ("image", "document"):
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = str(source.get("url"))
        elif source.get("type") == "text" and kind == "document":
            return {"type": "text", "text": str(source.get("data") or "")}
        else:
            return None
        if kind == "image":
            part = {"type": "image_url", "image_url": {"url": url}}
        else:
            part = {"type": "file", "file": {"file_data": url, "filename": block.get("title") or "document"}}
    if part is not None and block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text") or "" for b in content or () if isinstance(b, dict) and b.get("type") == "text")


def _system_content(system: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    return [p for b in system if (p := _part(b)) is not None]


def _user_messages(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user turn: its tool results become ``tool`` messages (first, as Anthropic requires them first),
    the other blocks one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if block.get("type") == "tool_result":
            text = _text(block.get("content"))
            if isinstance(block.get("content"), list):  # images in a tool result travel as a user message
                parts.extend(p for b in block["content"] if b.get("type") == "image" and (p := _part(b)))
            if block.get("is_error"):
                text = "Error: " + text
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif (part := _part(block)) is not None:
            parts.append(part)
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_message(content: str | list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": _encode(block.get("input") or {}).decode()}})
        elif kind == "thinking":
            sealed = unseal_details(str(block.get("signature") or ""))
            if sealed is not None:  # another provider's reasoning (a Gemini thought signature), restored
                details.extend({**detail, "index": len(details) + n} for n, detail in enumerate(sealed))
                continue
            details.append({"type": "reasoning.text", "text": block.get("thinking") or "",
                            "signature": block.get("signature"), "format": CLAUDE_FORMAT,
                            "index": len(details)})
        elif kind == "redacted_thinking":
            details.append({"type": "reasoning.encrypted", "data": block.get("data") or "",
                            "format": CLAUDE_FORMAT, "index": len(details)})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    if details:
        message["reasoning_details"] = details
    return message


def _tool(tool: dict[str, Any]) -> dict[str, Any] | None:
    """A custom tool as a canonical function tool; server tools (web search…) have no translation."""
    if "input_schema" not in tool or tool.get("type") not in (None, "custom"):
        return None
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    out: dict[str, Any] = {"type": "function", "function": function}
    if tool.get("cache_control"):
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return "none" if kind == "none" else "auto"


def _reasoning(request: MessagesRequest) -> dict[str, Any] | None:
    thinking = request.thinking or {}
    effort = (request.output_config or {}).get("effort")
    reasoning: dict[str, Any] = {}
    if thinking.get("type") == "enabled":
        reasoning["enabled"] = True
        if isinstance(thinking.get("budget_tokens"), int):
            reasoning["max_tokens"] = thinking["budget_tokens"]
    elif thinking.get("type") == "adaptive":
        reasoning["enabled"] = True
    elif thinking.get("type") == "disabled":
        reasoning["enabled"] = False
    if isinstance(effort, str) and effort in EFFORTS:
        reasoning["effort"] = EFFORTS[effort]
    return reasoning or None


@shape_checked("Anthropic Messages")
def canonical_request(request: MessagesRequest, *, stream: bool) -> dict[str, Any]:
    """The canonical (chat-completions) body for a Messages request."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _system_content(request.system)})
    for message in request.messages:
        if message.role == "user":
            messages.extend(_user_messages(message.content))
        elif message.role == "assistant":
            messages.append(_assistant_message(message.content))
        else:  # the mid-conversation system message of Claude Code's beta
            messages.append({"role": "system", "content": _text(message.content)})
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.max_tokens:
        body["max_tokens"] = request.max_tokens
    tools = [t for t in (_tool(tool) for tool in request.tools or ()) if t is not None]
    if tools:
        body["tools"] = tools
        if request.tool_choice:
            body["tool_choice"] = _tool_choice(request.tool_choice)
            if request.tool_choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False
    for name, value in (("temperature", request.temperature), ("top_p", request.top_p),
                        ("top_k", request.top_k)):
        if value is not None:
            body[name] = value
    if request.stop_sequences:
        body["stop"] = request.stop_sequences[:4]
    user = (request.metadata or {}).get("user_id")
    if isinstance(user, str) and user:
        body["user"] = user[:256]
    reasoning = _reasoning(request)
    if reasoning:
        body["reasoning"] = reasoning
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # message_delta always reports usage
    return body


# -------------------------------------------------------------------------------------------- responses

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
# our HTTP status → Anthropic's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


def error_body(status: int, envelope: bytes) -> dict[str, Any]:
    error_type, message = envelope_parts(envelope)
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "error_type": error_type}


def anthropic_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic counts input without cache reads and writes; the canonical prompt_tokens includes them."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    out: dict[str, Any] = {"input_tokens": max(0, int(usage.get("prompt_tokens") or 0) - cached - written),
                           "output_tokens": int(usage.get("completion_tokens") or 0),
                           "cache_read_input_tokens": cached, "cache_creation_input_tokens": written}
    if usage.get("cost") is not None:
        out["cost"] = usage["cost"]
    return out


def foreign_thinking(detail: dict[str, Any]) -> dict[str, Any] | None:
    """Another provider's opaque reasoning (Gemini's thought signature, OpenAI's encrypted reasoning) as a
    thinking block whose ``signature`` carries it sealed: clients such as Claude Code send thinking blocks
    back exactly as they got them, so the next turn's upstream gets its own signature again (a
    ``redacted_thinking`` block would come back as Anthropic's, and be lost for any other provider)."""
    if detail.get("type") != "reasoning.encrypted" or detail.get("format") in (None, CLAUDE_FORMAT):
        return None
    return {"type": "thinking", "thinking": "", "signature": seal_details([detail])}


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = []
    for detail in message.get("reasoning_details") or ():
        foreign = foreign_thinking(detail)
        if foreign is not None:
            blocks.append(foreign)
        elif detail.get("type") == "reasoning.text":
            blocks.append({"type": "thinking", "thinking": detail.get("text") or "",
                           "signature": detail.get("signature") or ""})
        elif detail.get("type") == "reasoning.encrypted":
            blocks.append({"type": "redacted_thinking", "data": detail.get("data") or ""})
    text = message.get("reasoning") or message.get("reasoning_content")
    if not blocks and text:
        blocks.append({"type": "thinking", "thinking": text, "signature": ""})
    return blocks


def message_from_completion(completion: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A Messages answer for a canonical completion; ``model`` is the id the client asked for (echoed)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = _thinking_blocks(message)
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = msgspec.json.decode(function.get("arguments") or "{}")
        except msgspec.DecodeError:
            arguments = {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": arguments if isinstance(arguments, dict) else {}})
    return {
        "id": "msg_" + str(completion.get("id") or "").removeprefix("chatcmpl-"),
        "type": "message", "role": "assistant", "model": model or completion.get("model"), "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None, "usage": anthropic_usage(completion.get("usage")),
    }


class AnthropicMessages:
    """The Messages wire format. ``model``: the id the client sent, which every answer names as its model
    (Claude Code drops signed thinking blocks from a turn whose model differs from the one it asked for);
    None names the serving model (``provider/model``), as chat completions do."""

    def __init__(self, model: str | None = None) -> None:
        self.model = model

    def answering(self, model: str) -> "AnthropicMessages":
        """This format for one request that asked for ``model``."""
        return AnthropicMessages(model)

    def error_body(self, status: int, envelope: bytes) -> bytes:
        return _encode(error_body(status, envelope))

    def result(self, event: Event) -> bytes:
        if event.native:
            return event.data
        return _encode(message_from_completion(msgspec.json.decode(event.data), self.model))

    def stream(self) -> "MessagesStream":
        return MessagesStream(self.model)


class MessagesStream(CanonicalStream):
    """Canonical chunks → Anthropic's events for one stream: one open content block at a time."""

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.started = False
        self.index = -1  # of the open block
        self.open: str | None = None  # "text" | "thinking" | "redacted" | "tool_use"
        self.tools: dict[int, int] = {}  # canonical tool_calls index → block index

    def begin(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if self.started:
            return
        self.started = True
        out.append(sse("message_start", {"type": "message_start", "message": {
            "id": "msg_" + str(chunk.get("id") or "").removeprefix("chatcmpl-"), "type": "message",
            "role": "assistant", "model": self.model or chunk.get("model"), "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}))

    def end(self, out: list[bytes]) -> None:
        self._close(out)
        stop_reason = STOP_REASONS.get(self.finish_reason or "stop", "end_turn")
        out.append(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                         "usage": anthropic_usage(self.usage)}))
        out.append(sse("message_stop", {"type": "message_stop"}))

    def _start(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self.index += 1
        self.open = kind
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block}))

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open = None

    def _block_delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                               "delta": delta}))

    def delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        details = delta.get("reasoning_details") or ()
        thinking = delta.get("reasoning") or delta.get("reasoning_content")
        if not details and thinking:
            details = [{"type": "reasoning.text", "text": thinking}]
        for detail in details:
            foreign = foreign_thinking(detail)
            if foreign is not None:  # a block of its own: a signature_delta replaces the block's signature
                self._start("thinking", {**foreign, "signature": ""}, out)
                self._block_delta({"type": "signature_delta", "signature": foreign["signature"]}, out)
                self._close(out)
                continue
            if detail.get("type") == "reasoning.encrypted":
                self._start("redacted", {"type": "redacted_thinking", "data": detail.get("data") or ""}, out)
                self._close(out)
                continue
            if self.open != "thinking":
                self._start("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            if detail.get("text"):
                self._block_delta({"type": "thinking_delta", "thinking": detail["text"]}, out)
            if detail.get("signature"):
                self._block_delta({"type": "signature_delta", "signature": detail["signature"]}, out)
        if delta.get("content"):
            if self.open != "text":
                self._start("text", {"type": "text", "text": ""}, out)
            self._block_delta({"type": "text_delta", "text": delta["content"]}, out)
        for call in delta.get("tool_calls") or ():
            position = int(call.get("index") or 0)
            function = call.get("function") or {}
            if position not in self.tools:
                self._start("tool_use", {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                                         "input": {}}, out)
                self.tools[position] = self.index
            if function.get("arguments"):
                if self.tools[position] != self.index:  # interleaved calls: Anthropic streams one block at a time
                    continue
                self._block_delta({"type": "input_json_delta", "partial_json": function["arguments"]}, out)

    def error(self, status: int, envelope: bytes) -> bytes:
        return sse("error", error_body(status, envelope))


ANTHROPIC_MESSAGES = AnthropicMessages()
