"""A fake Anthropic Messages API that is as strict as the real one where translations usually go wrong.

It checks the headers, ``max_tokens``, role alternation, empty text blocks, tool id syntax and tool_use /
tool_result pairing, answering 400/401 with Anthropic's error body, so an adapter bug fails a test instead of
production. Failures are scripted per request through ``AnthropicFakeState.failures``.

Extended thinking is as strict as the real API: ``budget_tokens`` of at least 1024 and below
``max_tokens``, no temperature or top_k with it, no forced tool choice, and a final assistant turn with
``tool_use`` must start with a thinking block whose ``signature`` is one this server issued. Prompt
caching checks ``cache_control`` (ephemeral, ttl 5m/1h, at most 4 breakpoints) and reports cache usage;
``output_config.format`` answers with the scripted JSON. Per model family (``tests/fakes/strict.py``):
unknown fields, thinking on a model without it, temperature with top_p where refused, sampling and budgets
on adaptive-only models, whitespace-only text, ``max_tokens`` above the model's output limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.strict import ANTHROPIC_RULES, first_refusal

_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_", "bash_", "text_editor_", "computer_", "memory_")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


@dataclass
class AnthropicFakeState:
    """What the fake answers; tests mutate it between requests.

    ``failures`` is consumed one entry per request: an HTTP status (``529``, ``500``, ``429`` …), ``"reset"``
    (the body breaks off mid-transfer), ``"midstream_error"`` (200, some text, then ``event: error``
    overloaded) or ``"cut"`` (200, some text, then a clean close without ``message_stop``).
    """

    reply: str = "Hello from the fake Claude."
    tool_call: dict[str, Any] | list[dict[str, Any]] | None = None  # {"id"?, "name", "input"}, when tools are sent
    failures: list[int | str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "body"} per request received
    latency: float = 0.0  # seconds before the answer and between stream events
    api_key: str | None = None  # when set, x-api-key must equal it
    input_tokens: int = 12
    retry_after: str | None = "1"  # sent with 429 and 529
    chunk_chars: int = 5  # characters per text_delta / input_json_delta
    thinking: str = "Let me think this through step by step."  # sent when the request enables thinking
    redacted: str | None = None  # also send a redacted_thinking block with this data
    cache_read_tokens: int = 0  # reported when the request carries cache_control
    cache_write_tokens: int = 0
    json_answer: Any = None  # the answer to output_config.format / a forced tool (default: the tool's input)


def signature_of(thinking: str) -> str:
    """The signature this fake issues for a thinking text (the real API's is opaque; ours is checkable)."""
    return "sig_" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_fake"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(ERROR_TYPES.get(status, "api_error"), message), status_code=status,
                        headers=headers)


# ---------------------------------------------------------------- validation like the real API


def _check_headers(request: Request, state: AnthropicFakeState) -> Response | None:
    key = request.headers.get("x-api-key")
    if not key:
        return _error(401, "x-api-key header is required")
    if state.api_key is not None and key != state.api_key:
        return _error(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(400, "anthropic-version: header is required")
    return None


def _check_block(where: str, block: Any) -> str | None:
    if not isinstance(block, dict) or "type" not in block:
        return f"{where}: content blocks must be objects with a type"
    kind = block["type"]
    if kind == "text" and not block.get("text"):
        return f"{where}: text content blocks must be non-empty"
    if kind == "tool_use":
        if not _TOOL_ID.fullmatch(str(block.get("id") or "")):
            return f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
        if not isinstance(block.get("input"), dict):
            return f"{where}.input: Input should be a valid dictionary"
    if kind == "tool_result" and not _TOOL_ID.fullmatch(str(block.get("tool_use_id") or "")):
        return f"{where}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'"
    if kind == "thinking":
        if not block.get("signature"):
            return f"{where}.thinking.signature: Field required"
        if block["signature"] != signature_of(str(block.get("thinking") or "")):
            return f"{where}: Invalid `signature` in `thinking` block"
    if kind == "redacted_thinking" and not block.get("data"):
        return f"{where}.redacted_thinking.data: Field required"
    return _check_cache_control(where, block)


def _check_cache_control(where: str, block: dict[str, Any]) -> str | None:
    control = block.get("cache_control")
    if control is None:
        return None
    if not isinstance(control, dict) or control.get("type") != "ephemeral":
        return f"{where}.cache_control.type: Input should be 'ephemeral'"
    if control.get("ttl") not in (None, "5m", "1h"):
        return f"{where}.cache_control.ttl: Input should be '5m' or '1h'"
    return None


def _cache_breakpoints(body: dict[str, Any]) -> int:
    system = body.get("system") if isinstance(body.get("system"), list) else []
    blocks = [b for m in body.get("messages") or () for b in _blocks(m)] + list(system) + list(body.get("tools") or ())
    return sum(1 for b in blocks if isinstance(b, dict) and b.get("cache_control"))


def thinking_enabled(body: dict[str, Any]) -> bool:
    return isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"


def _check_thinking(body: dict[str, Any]) -> str | None:
    if not thinking_enabled(body):
        return None
    budget = body["thinking"].get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    if body.get("temperature") not in (None, 1, 1.0):
        return "`temperature` may only be set to 1 when thinking is enabled"
    if body.get("top_k") is not None:
        return "`top_k` is not supported when thinking is enabled"
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    assistants = [i for i, m in enumerate(body["messages"]) if m.get("role") == "assistant"]
    if assistants:
        last = _blocks(body["messages"][assistants[-1]])
        if any(b.get("type") == "tool_use" for b in last) and last[0].get("type") not in ("thinking", "redacted_thinking"):
            return (f"messages.{assistants[-1]}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{last[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                    "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).")
    return None


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _check_tool_pairing(messages: list[dict[str, Any]]) -> str | None:
    """Each tool_result answers a tool_use of the turn just before; each tool_use is answered in the next turn."""
    for i, message in enumerate(messages):
        results = [b.get("tool_use_id") for b in _blocks(message) if b.get("type") == "tool_result"]
        kinds = [b.get("type") for b in _blocks(message)]
        if results and kinds[: len(results)] != ["tool_result"] * len(results):
            return f"messages.{i}: tool_result blocks must come first in the content"
        previous = {b.get("id") for b in _blocks(messages[i - 1]) if b.get("type") == "tool_use"} if i else set()
        if set(results) - previous:
            return f"messages.{i}: unexpected tool_use_id found in tool_result blocks"
        uses = {b.get("id") for b in _blocks(message) if b.get("type") == "tool_use"}
        if uses and i + 1 < len(messages):
            answered = {b.get("tool_use_id") for b in _blocks(messages[i + 1]) if b.get("type") == "tool_result"}
            if uses - answered:
                return f"messages.{i}: tool_use ids were found without tool_result blocks immediately after"
    return None


def validate(body: Any) -> str | None:
    """The first problem the real API would report with a 400, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not body.get("model"):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_role = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous_role:
            return "messages: roles must alternate between \"user\" and \"assistant\""
        previous_role = role
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                return f"messages.{i}: text content blocks must be non-empty"
            continue
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: must be a non-empty string or list"
        for j, block in enumerate(content):
            problem = _check_block(f"messages.{i}.content.{j}", block)
            if problem:
                return problem
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    for j, tool in enumerate(body.get("tools") or ()):
        if str(tool.get("type") or "").startswith(SERVER_TOOLS):  # Anthropic's own tools: no input_schema
            continue
        if not tool.get("name") or (tool.get("input_schema") or {}).get("type") != "object":
            return f"tools.{j}: name and input_schema of type object are required"
        problem = _check_cache_control(f"tools.{j}", tool)
        if problem:
            return problem
    for j, block in enumerate(system if isinstance(system, list) else ()):
        problem = _check_block(f"system.{j}", block)
        if problem:
            return problem
    if _cache_breakpoints(body) > 4:
        return "A maximum of 4 blocks with cache_control may be provided."
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is not None and (fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict)):
        return "output_config.format: a json_schema format with a schema is required"
    found = first_refusal(ANTHROPIC_RULES, str(body["model"]), body)  # per model family (tests/fakes/strict.py)
    if found is not None:
        return found[0]
    return _check_thinking(body) or _check_tool_pairing(messages)


# ---------------------------------------------------------------- answers


def _content(state: AnthropicFakeState, body: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if thinking_enabled(body):
        blocks.append({"type": "thinking", "thinking": state.thinking, "signature": signature_of(state.thinking)})
        if state.redacted:
            blocks.append({"type": "redacted_thinking", "data": state.redacted})
    forced = (body.get("tool_choice") or {}).get("name") if (body.get("tool_choice") or {}).get("type") == "tool" else None
    if forced:
        call = state.tool_call if isinstance(state.tool_call, dict) else {}
        answer = state.json_answer if state.json_answer is not None else call.get("input", {})
        return blocks + [{"type": "tool_use", "id": "toolu_forced01", "name": forced, "input": answer}]
    if (body.get("output_config") or {}).get("format"):
        return blocks + [{"type": "text", "text": json.dumps(state.json_answer or {})}]
    if state.reply:
        blocks.append({"type": "text", "text": state.reply})
    if state.tool_call and body.get("tools"):
        calls = state.tool_call if isinstance(state.tool_call, list) else [state.tool_call]
        for n, call in enumerate(calls):
            blocks.append({"type": "tool_use", "id": call.get("id", f"toolu_fake{n:02d}"), "name": call["name"],
                           "input": call.get("input", {})})
    return blocks


def _output_tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(b).split()) for b in blocks)


def message_body(state: AnthropicFakeState, body: dict[str, Any]) -> dict[str, Any]:
    blocks = _content(state, body)
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": body["model"], "content": blocks,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": state.input_tokens, "output_tokens": _output_tokens(blocks),
                      **_cache_usage(state, body), **_server_tool_use(body)}}


def _server_tool_use(body: dict[str, Any]) -> dict[str, Any]:
    """One web search per request that offers the tool, reported as Anthropic bills it."""
    if any(str(t.get("type") or "").startswith("web_search_") for t in body.get("tools") or ()):
        return {"server_tool_use": {"web_search_requests": 1}}
    return {}


def _cache_usage(state: AnthropicFakeState, body: dict[str, Any]) -> dict[str, int]:
    cached = _cache_breakpoints(body) > 0
    return {"cache_creation_input_tokens": state.cache_write_tokens if cached else 0,
            "cache_read_input_tokens": state.cache_read_tokens if cached else 0}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _block_events(index: int, block: dict[str, Any], size: int) -> list[bytes]:
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], size)]
    elif block["type"] == "thinking":
        start = {"type": "thinking", "thinking": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], size)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif block["type"] == "redacted_thinking":
        start, deltas = dict(block), []
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        fragments = [""] + _pieces(json.dumps(block["input"]), size)  # the real API often starts with ""
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in fragments]
    events = [sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})]
    if index == 0:
        events.append(sse("ping", {"type": "ping"}))
    events += [sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
               for d in deltas]
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def stream_events(state: AnthropicFakeState, body: dict[str, Any], failure: int | str | None) -> list[bytes]:
    """The whole stream in the documented order, or its scripted broken variant."""
    message = message_body(state, body)
    start = dict(message, content=[], stop_reason=None,
                 usage={"input_tokens": state.input_tokens, "output_tokens": 1, **_cache_usage(state, body)})
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        events += _block_events(index, block, state.chunk_chars)
    if failure in ("midstream_error", "cut"):
        events = events[:4]  # message_start, block start, ping, first delta
        if failure == "midstream_error":
            events.append(sse("error", error_body("overloaded_error", "Overloaded")))
        return events
    events.append(sse("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                        "usage": {"output_tokens": message["usage"]["output_tokens"],
                                                  **_server_tool_use(body)}}))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


async def _paced(events: list[bytes], latency: float, reset: bool) -> AsyncIterator[bytes]:
    for event in events:
        if latency:
            await asyncio.sleep(latency)
        yield event
    if reset:
        raise ConnectionResetError("scripted reset")  # uvicorn aborts the chunked body: the client sees a cut


def create_anthropic_app(state: AnthropicFakeState) -> Starlette:
    async def messages(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        state.requests.append({"headers": dict(request.headers), "body": body})
        problem = _check_headers(request, state)
        if problem is not None:
            return problem
        problem_text = validate(body)
        if problem_text:
            return _error(400, problem_text)
        failure = state.failures.pop(0) if state.failures else None
        if isinstance(failure, int):
            headers = {"retry-after": state.retry_after} if state.retry_after and failure in (429, 529) else None
            return _error(failure, ERROR_TYPES.get(failure, "error").replace("_", " "), headers)
        if state.latency:
            await asyncio.sleep(state.latency)
        if failure == "reset":
            events = stream_events(state, body, "cut")[:2] if body.get("stream") else [b'{"id": "msg_fa']
            return StreamingResponse(_paced(events, 0, True), media_type="application/json")
        if body.get("stream"):
            return StreamingResponse(_paced(stream_events(state, body, failure), state.latency, False),
                                     media_type="text/event-stream")
        return JSONResponse(message_body(state, body))

    async def count_tokens(request: Request) -> Response:
        """``/v1/messages/count_tokens``: a deterministic count (words of the JSON), not our estimate."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not valid JSON")
        state.requests.append({"headers": dict(request.headers), "body": body, "path": "count_tokens"})
        problem = _check_headers(request, state)
        if problem is not None:
            return problem
        unknown = set(body) - {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
        if unknown:
            return _error(400, f"{sorted(unknown)[0]}: Extra inputs are not permitted")
        counted = {k: body.get(k) for k in ("system", "messages", "tools")}
        return JSONResponse({"input_tokens": len(json.dumps(counted).split())})

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]),
                             Route("/v1/messages/count_tokens", count_tokens, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.anthropic_server --port 9200``: an Anthropic upstream for trying clients
    (``ANTHROPIC_BASE_URL=http://127.0.0.1:9200``); any ``x-api-key`` is accepted."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="Fake Anthropic Messages upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--reply", default=AnthropicFakeState.reply)
    args = parser.parse_args(argv)
    uvicorn.run(create_anthropic_app(AnthropicFakeState(reply=args.reply)), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
