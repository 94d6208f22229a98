"""The scripted agent session (``agent_script.py``) behind OpenAI's Chat Completions API, as strict as
OpenAI is about what a model takes.

Refused with OpenAI's own 400 (error body ``{"error": {message, type, param, code}}``):
- a parameter the API does not have (``Unrecognized request argument supplied``; the parameter list is
  openai-python's ``completion_create_params.py``);
- per model family (``FAMILIES``): ``max_tokens``, or a ``temperature``/``top_p`` other than 1, on a
  reasoning model (o-series, gpt-5: "Use 'max_completion_tokens' instead", "Only the default (1) value is
  supported"); ``reasoning_effort`` on a model without reasoning; an output budget above the model's
  limit ("max_tokens is too large"); reference/agent-clients.md records each as OpenAI answers it;
- ``user`` longer than 64 characters;
- a ``tool`` message that answers no preceding assistant ``tool_calls`` (an orphan tool result), and an
  assistant ``tool_calls`` message not followed by a tool message for each call;
- a tool name outside ``^[a-zA-Z0-9_-]{1,64}$``, an unknown message role, a model it does not serve (404).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.agent_script import AgentSession, Seen, Turn, tool_result_text

KNOWN_PARAMETERS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Family:
    """What a family of OpenAI models takes (OpenAI's model pages: output limits, reasoning)."""

    prefix: str
    reasoning: bool
    max_output: int


FAMILIES = (  # longest prefix first
    Family("gpt-4o-mini", False, 16_384),
    Family("gpt-4o", False, 16_384),
    Family("gpt-4.1", False, 32_768),
    Family("gpt-5", True, 128_000),
    Family("o4-mini", True, 100_000),
    Family("o3", True, 100_000),
)


def family_of(model: str) -> Family | None:
    return next((f for f in FAMILIES if model.startswith(f.prefix)), None)


class Refusal(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def check(body: Any) -> Family:
    """The request as OpenAI reads it; raises ``Refusal`` with OpenAI's wording."""
    if not isinstance(body, dict):
        raise Refusal("We could not parse the JSON body of your request.")
    for name in body:
        if name not in KNOWN_PARAMETERS:
            raise Refusal(f"Unrecognized request argument supplied: {name}", name)
    model = body.get("model")
    family = family_of(model) if isinstance(model, str) else None
    if family is None:
        raise Refusal(f"The model `{model}` does not exist or you do not have access to it.", "model",
                      "model_not_found", status=404)
    if family.reasoning:
        if "max_tokens" in body:
            raise Refusal("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        for name in ("temperature", "top_p"):
            if name in body and body[name] != 1:
                raise Refusal(f"Unsupported value: '{name}' does not support {body[name]} with this model. Only "
                              "the default (1) value is supported.", name, "unsupported_value")
    elif "reasoning_effort" in body:
        raise Refusal("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                      "reasoning_effort", "unsupported_parameter")
    for name in ("max_tokens", "max_completion_tokens"):
        asked = body.get(name)
        if isinstance(asked, int) and asked > family.max_output:
            raise Refusal(f"max_tokens is too large: {asked}. This model supports at most {family.max_output} "
                          f"completion tokens, whereas you provided {asked}.", name, "invalid_value")
    user = body.get("user")
    if isinstance(user, str) and len(user) > 64:
        raise Refusal(f"Invalid 'user': string too long. Expected a string with maximum length 64, but got a "
                      f"string with length {len(user)} instead.", "user", "string_above_max_length")
    for n, tool in enumerate(body.get("tools") or ()):
        name = ((tool or {}).get("function") or {}).get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise Refusal(f"Invalid 'tools[{n}].function.name': string does not match pattern. Expected a string "
                          "that matches the pattern '^[a-zA-Z0-9_-]+$'.", f"tools[{n}].function.name",
                          "invalid_value")
    _check_messages(body.get("messages"))
    return family


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Refusal("Missing required parameter: 'messages'.", "messages")
    pending: list[str] = []  # tool_call ids the next messages must answer
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise Refusal(f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                          "'tool', and 'developer'.", f"messages[{n}].role", "invalid_value")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                raise Refusal("Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                              "message with 'tool_calls'.", f"messages.[{n}].role")
            pending.remove(message["tool_call_id"])
            continue
        if pending:
            raise Refusal("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          f"each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          f"{', '.join(pending)}", f"messages.[{n}].role")
        if role == "assistant":
            pending = [str(call.get("id")) for call in message.get("tool_calls") or ()]
    if pending:
        raise Refusal("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                      f"'tool_call_id'. The following tool_call_ids did not have response messages: "
                      f"{', '.join(pending)}", "messages")


def seen_of(body: dict[str, Any]) -> Seen:
    tools = tuple(str(((t or {}).get("function") or {}).get("name")) for t in body.get("tools") or ())
    results = {str(m.get("tool_call_id")): tool_result_text(m.get("content"))
               for m in body["messages"] if m.get("role") == "tool"}
    calls = tuple(str(c.get("id")) for m in body["messages"] if m.get("role") == "assistant"
                  for c in m.get("tool_calls") or ())
    return Seen(tools=tools, results=results, calls=calls)


def _usage(body: dict[str, Any], reasoning: bool) -> dict[str, Any]:
    prompt = max(1, len(json.dumps(body["messages"])) // 4)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 12, "total_tokens": prompt + 12}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": 8}
    return usage


def _message(turn: Turn) -> dict[str, Any]:
    if turn.call_id:
        call = {"id": turn.call_id, "type": "function",
                "function": {"name": turn.tool, "arguments": json.dumps(turn.arguments)}}
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    return {"role": "assistant", "content": turn.text, "refusal": None}


def _chunks(turn: Turn, head: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat completion chunks as OpenAI streams them (reference/provider-formats.md §1.5)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    if turn.call_id:
        arguments = json.dumps(turn.arguments)
        first = {"index": 0, "id": turn.call_id, "type": "function", "function": {"name": turn.tool, "arguments": ""}}
        out = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
        out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 16]}}]})
                for i in range(0, len(arguments), 16)]
        return out + [chunk({}, "tool_calls")]
    words = re.findall(r"\S+\s*", turn.text)
    return [chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in words] + [chunk({}, "stop")]


def create_app(session: AgentSession) -> Starlette:
    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        session.record(request.url.path, dict(request.headers), body)
        try:
            family = check(body)
        except Refusal as refusal:
            session.refuse(refusal.status, refusal.message)
            error = {"message": refusal.message, "type": "invalid_request_error", "param": refusal.param,
                     "code": refusal.code}
            return JSONResponse({"error": error}, status_code=refusal.status)
        turn = session.decide(seen_of(body))
        head = {"id": f"chatcmpl-agent{len(session.requests)}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body["model"], "system_fingerprint": "fp_agent"}
        usage = _usage(body, family.reasoning)
        if not body.get("stream"):
            finish = "tool_calls" if turn.call_id else "stop"
            return JSONResponse({**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": _message(turn), "logprobs": None, "finish_reason": finish}]})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def frames() -> AsyncIterator[bytes]:
            for chunk in _chunks(turn, head):
                if include_usage:
                    chunk["usage"] = None
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            if include_usage:
                yield b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    routes = [Route(f"{prefix}/chat/completions", completions, methods=["POST"]) for prefix in ("", "/v1")]
    return Starlette(routes=routes)
