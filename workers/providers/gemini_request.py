"""OpenAI chat messages and options → Gemini ``contents``, ``systemInstruction``, ``generationConfig``,
``tools`` and ``toolConfig``.

Roles become ``user``/``model``; tool results become ``functionResponse`` parts that carry the function's
*name* (looked up from the assistant turn that called it); thought signatures travel back on function
calls (Google's placeholder when the history came from elsewhere).
"""

from __future__ import annotations

import mimetypes
from typing import Any

import msgspec

from workers.providers import reasoning
from workers.providers.base import UpstreamError
from workers.providers.gemini_schema import clean_schema

# Google documents this value for function calls whose real signature is unknown (history written
# elsewhere); Gemini 3 rejects a function-call turn with no signature at all.
DUMMY_THOUGHT_SIGNATURE = "skip_thought_signature_validator"


def _invalid(message: str, param: str | None = None) -> UpstreamError:
    """A request this adapter cannot translate: the client's to fix, no other provider would help."""
    return UpstreamError(400, message, retryable=False, fallback=False, error_type="invalid_request", param=param)


# ---------------------------------------------------------------- request: messages → contents


def _text_of(content: Any) -> str:
    """Plain text of an OpenAI content (string or array of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _data_url_part(url: str) -> dict[str, Any] | None:
    """``data:<mime>;base64,<data>`` → ``inlineData``."""
    header, _, data = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        return None
    mime = header[len("data:"):].split(";", 1)[0] or "application/octet-stream"
    return {"inlineData": {"mimeType": mime, "data": data}}


def _url_part(url: str, default_mime: str) -> dict[str, Any]:
    if url.startswith("data:"):
        part = _data_url_part(url)
        if part is None:
            raise _invalid("only base64 data URLs are supported in image_url")
        return part
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for item in content or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            if item.get("text"):
                parts.append({"text": item["text"]})
        elif kind == "image_url":
            image = item.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str):
                parts.append(_url_part(url, "image/jpeg"))
        elif kind == "input_audio":
            audio = item.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                         "data": audio.get("data", "")}})
        elif kind == "file":
            data = (item.get("file") or {}).get("file_data")
            if isinstance(data, str):
                parts.append(_url_part(data, "application/pdf"))
    return parts


def _model_parts(message: dict[str, Any], dummy_signature: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    by_call, loose = _returned_signatures(message)
    text = _text_of(message.get("content"))
    if text:
        parts.append({"text": text, "thoughtSignature": loose[0]} if loose else {"text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    signatures = [_signature_of(c) or by_call.get(str(c.get("id"))) for c in calls]
    for n, call in enumerate(calls):
        function = call.get("function") or {}
        part: dict[str, Any] = {"functionCall": {"name": function.get("name", ""),
                                                 "args": _parse_args(function.get("arguments"))}}
        if signatures[n]:
            part["thoughtSignature"] = signatures[n]
        elif n == 0 and dummy_signature and not any(signatures):
            part["thoughtSignature"] = DUMMY_THOUGHT_SIGNATURE
        parts.append(part)
    return parts


def _signature_of(call: dict[str, Any]) -> str | None:
    return ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")


def _returned_signatures(message: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Gemini thought signatures a client kept in ``reasoning_details``: (by tool call id, on text)."""
    by_call: dict[str, str] = {}
    loose: list[str] = []
    for detail in reasoning.returned_details(message):
        if detail.get("type") != "reasoning.encrypted" or detail.get("format") != "google-gemini-v1":
            continue
        if not detail.get("data"):
            continue
        if detail.get("id"):
            by_call[str(detail["id"])] = detail["data"]
        else:
            loose.append(detail["data"])
    return by_call, loose


def _parse_args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except (msgspec.DecodeError, TypeError):
        raise _invalid("tool_calls[].function.arguments must be a JSON object") from None
    return value if isinstance(value, dict) else {"value": value}


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    name = name or message.get("name")
    if not name:
        raise _invalid(f"tool message refers to unknown tool_call_id {call_id!r}", param="messages")
    text = _text_of(message.get("content"))
    response: Any = {"result": text}
    if text.startswith("{"):
        try:
            parsed = msgspec.json.decode(text)
        except msgspec.DecodeError:
            parsed = None
        if isinstance(parsed, dict):
            response = parsed
    return {"functionResponse": {"name": name, "response": response}}


def build_contents(messages: list[dict[str, Any]], dummy_signature: bool = True) -> tuple[list[str], list[dict]]:
    """OpenAI messages → (system texts, Gemini contents)."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id → function name, for functionResponse
    last_was_tool = False
    for message in messages:
        role = message.get("role")
        is_tool = role in ("tool", "function")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            parts = _user_parts(message.get("content"))
            if parts:
                contents.append({"role": "user", "parts": parts})
        elif role == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and call.get("id"):
                    names[call["id"]] = (call.get("function") or {}).get("name", "")
            parts = _model_parts(message, dummy_signature)
            if parts:
                contents.append({"role": "model", "parts": parts})
        elif is_tool:
            part = _function_response(message, names)
            if last_was_tool:
                contents[-1]["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            raise _invalid(f"unsupported message role {role!r}", param="messages")
        last_was_tool = is_tool
    return system, contents


# ---------------------------------------------------------------- request: options


# Gemini 2.5 thinks in token budgets; Gemini 3 in levels (it still takes a budget, as a legacy form).
THINKING_BUDGETS = {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576}
THINKING_LEVELS = {"minimal": "low", "low": "low", "medium": "high", "high": "high"}


def thinking_config(model: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """``reasoning`` / ``reasoning_effort`` → ``thinkingConfig``; thoughts are included unless excluded."""
    asked = reasoning.requested(body)
    raw = body.get("reasoning")
    if asked is None:
        disabled = (isinstance(raw, dict) and raw.get("enabled") is False) or body.get("reasoning_effort") == "none"
        return {"thinkingBudget": 0} if disabled and "gemini-3" not in model else None
    config: dict[str, Any] = {"includeThoughts": not asked.exclude}
    if asked.max_tokens is not None:
        config["thinkingBudget"] = asked.max_tokens
    elif "gemini-3" in model:
        config["thinkingLevel"] = THINKING_LEVELS[asked.effort or "medium"]
    else:
        config["thinkingBudget"] = THINKING_BUDGETS[asked.effort or "medium"]
    return config


def generation_config(body: dict[str, Any], model: str = "") -> dict[str, Any]:
    config: dict[str, Any] = {}
    thinking = thinking_config(model, body)
    if thinking:
        config["thinkingConfig"] = thinking
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                         ("n", "candidateCount")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if fmt["type"] == "json_schema" and isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema)
    return config


def function_declarations(tools: Any) -> list[dict[str, Any]]:
    declarations = []
    for tool in tools or ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function") or {}
        declaration: dict[str, Any] = {"name": function.get("name", "")}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = clean_schema(function.get("parameters"))
        if parameters.get("properties"):  # Gemini rejects an object schema with no properties
            declaration["parameters"] = parameters
        declarations.append(declaration)
    return declarations


def tool_config(tool_choice: Any) -> dict[str, Any] | None:
    if tool_choice in ("auto", "none", "required"):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[tool_choice]
        return {"functionCallingConfig": {"mode": mode}}
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None
