"""OpenAI chat requests → Anthropic Messages requests.

``system``/``developer`` messages become the top-level ``system``; roles must alternate, so tool results
(a user turn in Anthropic's model) and a following user message merge into one turn, tool results first;
tool ids from other providers are rewritten to Anthropic's alphabet, deterministically; empty and
whitespace-only text blocks are dropped; ``max_tokens`` is always sent.

Reasoning becomes ``thinking: {type: enabled, budget_tokens}`` (below ``max_tokens``, which is raised to
fit: ``router/shaping.py``'s ``output_plan``, the computation admission reserves for; sampling options
Anthropic refuses with thinking are dropped), or ``{type: adaptive}`` plus ``output_config.effort`` on the
models that think only that way; thinking blocks a client sends back
in ``reasoning_details`` are rebuilt first in their assistant turn, signature intact, as Anthropic requires
before ``tool_use``. ``cache_control`` stays on every block that carries it. ``response_format`` is native
structured output on the models that have it, else one forced tool whose input is the schema.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from router.shaping import EndpointShape, kind_shape, output_plan
from workers.providers import reasoning
from workers.providers.base import Upstream, UpstreamError

_TOOL_ID_OK = re.compile(r"[a-zA-Z0-9_-]+")
_TOOL_ID_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_DATA_URL = re.compile(r"data:([^;,]+)((?:;[^;,]*)*?);base64,(.*)", re.DOTALL)

_PASS_THROUGH = ("temperature", "top_p", "top_k")
# Anthropic's own service tiers; OpenAI's values (default, flex) have no meaning there and are not sent.
_SERVICE_TIERS = ("auto", "standard_only")

FORMAT = "anthropic-claude-v1"  # the reasoning_details format of Anthropic thinking blocks
# The forced tool that carries a JSON answer on models without native structured output.
JSON_TOOL = "json_response"
# Models with native structured output (output_config.format): Claude 4.5 and later, and Opus 4.1.
_NATIVE_JSON = re.compile(r"claude-(?:opus-4-1|(?:opus|sonnet|haiku)-(?:4-[5-9]|[5-9]))")


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


# ---------------------------------------------------------------- request: content parts


def _text_of(content: Any) -> str:
    """The plain text of a string or an array of text parts (system messages, tool results)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _text_block(text: str, part: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if not text or text.isspace():
        return None  # "text content blocks must contain non-whitespace text" (Anthropic's 400)
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
    return _cached({"type": "image", "source": source}, part)


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Keep the client's ``cache_control`` (with its ``ttl``) on the block built from ``part``."""
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _file_block(part: dict[str, Any]) -> dict[str, Any]:
    file = part.get("file") or {}
    match = _DATA_URL.fullmatch(str(file.get("file_data") or ""))
    if not match or match.group(1) != "application/pdf":
        raise _invalid("only base64 PDF file parts can be sent to Anthropic")
    return _cached({"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                   "data": match.group(3)}}, part)


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


def thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistant's earlier thinking, from its ``reasoning_details``, as Anthropic's own blocks.

    Only blocks Anthropic can verify go back: thinking with its signature, redacted thinking with its
    data; text from another provider's reasoning (or unsigned) is left out rather than refused.
    """
    blocks = []
    for detail in reasoning.returned_details(message):
        if detail.get("format") not in (None, FORMAT):
            continue
        if detail.get("type") == "reasoning.text" and detail.get("signature"):
            blocks.append({"type": "thinking", "thinking": detail.get("text") or "",
                           "signature": detail["signature"]})
        elif detail.get("type") == "reasoning.encrypted" and detail.get("data"):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
    return blocks


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = thinking_blocks(message) + _content_blocks(message.get("content"))
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
            content = message.get("content")
            if isinstance(content, list):  # each part its own block, so each keeps its cache_control
                system += [b for b in _content_blocks(content) if b["type"] == "text"]
            else:
                block = _text_block(_text_of(content))
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
        out.append(_cached(entry, tool))
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


def _options(payload: dict[str, Any], body: dict[str, Any]) -> None:
    """Sampling, stop sequences, the service tier and the end-user id."""
    for name in _PASS_THROUGH:
        if body.get(name) is not None:
            payload[name] = body[name]
    if body.get("service_tier") in _SERVICE_TIERS:
        payload["service_tier"] = body["service_tier"]
    if isinstance(payload.get("temperature"), int | float):
        payload["temperature"] = min(float(payload["temperature"]), 1.0)  # OpenAI allows 0–2, Anthropic 0–1
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        payload["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        payload["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
    if isinstance(body.get("user"), str) and body["user"]:
        payload["metadata"] = {"user_id": body["user"]}


def _thinking(payload: dict[str, Any], body: dict[str, Any], shape: EndpointShape, budget: int | None) -> None:
    """``reasoning`` / ``reasoning_effort`` (or Anthropic's own ``thinking``) → ``thinking``, with the request
    made valid for it. ``budget`` comes from the request's output plan, as ``max_tokens`` does."""
    asked = reasoning.requested(body) if shape.reasoning else None
    if asked is None:
        return
    if shape.thinking == "adaptive":
        payload["thinking"] = {"type": "adaptive"}
        if asked.effort:
            payload["output_config"] = {**payload.get("output_config", {}), "effort": asked.effort}
    elif budget is not None:
        payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
    else:
        return
    # With thinking Anthropic accepts no temperature but 1, top_p only from 0.95, and no top_k.
    payload.pop("temperature", None)
    payload.pop("top_k", None)
    if isinstance(payload.get("top_p"), int | float) and payload["top_p"] < 0.95:
        payload.pop("top_p")


def json_schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema ``response_format`` asks for (any object for ``json_object``), or None for text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object", "additionalProperties": True}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        raise UpstreamError(400, "response_format must be json_object, or json_schema with a schema",
                            retryable=False, fallback=False, error_type="invalid_request",
                            param="response_format")
    return schema


def uses_json_tool(model: str, body: dict[str, Any]) -> bool:
    """Whether this request's JSON answer travels in the forced ``JSON_TOOL`` (no native structured output)."""
    return json_schema_of(body) is not None and not _NATIVE_JSON.search(model)


def _structured_output(payload: dict[str, Any], model: str, body: dict[str, Any]) -> None:
    schema = json_schema_of(body)
    if schema is None:
        return
    if _NATIVE_JSON.search(model):
        payload["output_config"] = {**payload.get("output_config", {}),
                                    "format": {"type": "json_schema", "schema": schema}}
        return
    # Never dropped silently: where the forced tool cannot work, refuse (another candidate may serve it).
    if payload.get("tools"):
        raise _invalid(f"response_format together with tools needs native structured output, which {model} "
                       "does not have")
    if "thinking" in payload:
        raise _invalid(f"response_format together with reasoning needs native structured output, which {model} "
                       "does not have")
    if schema.get("type") != "object":  # as OpenAI requires too: a tool's input is an object
        raise UpstreamError(400, "response_format json_schema must have an object at its root",
                            retryable=False, fallback=False, error_type="invalid_request",
                            param="response_format")
    payload["tools"] = [{"name": JSON_TOOL, "description": "Reply with the answer as this JSON object.",
                         "input_schema": schema}]
    payload["tool_choice"] = {"type": "tool", "name": JSON_TOOL}


def messages_payload(up: Upstream, model: str, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Anthropic request body for an OpenAI chat body (exposed for tests)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise _invalid("n > 1 is not supported by Anthropic")
    shape = up.shape or kind_shape("anthropic", up.provider)
    plan = output_plan(shape, body, default=up.default_max_tokens)  # as shaped: the plan admission reserved
    system, turns = translate_messages(body.get("messages") or [])
    payload: dict[str, Any] = {"model": model, "max_tokens": plan.cap or up.default_max_tokens, "messages": turns}
    system_field = _system_field(system)
    if system_field is not None:
        payload["system"] = system_field
    if body.get("tools"):
        payload["tools"] = translate_tools(body["tools"])
        choice = translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            payload["tool_choice"] = choice
    _options(payload, body)
    _thinking(payload, body, shape, plan.budget)
    _structured_output(payload, model, body)
    if stream:
        payload["stream"] = True
    return payload
