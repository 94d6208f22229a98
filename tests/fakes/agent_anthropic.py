"""The scripted agent session (``agent_script.py``) behind Anthropic's Messages API, as strict as
Anthropic is.

Refused with Anthropic's own error (``{"type": "error", "error": {"type", "message"}}``; the messages
are Anthropic's, as clients report them):
- no ``x-api-key`` / ``anthropic-version`` header (401 / 400), no ``max_tokens``;
- a top-level field the API does not have (``Extra inputs are not permitted``; the field list is the
  Messages API reference plus the betas Claude Code sends: ``context_management``, ``output_config``);
- per model (``MODELS``): ``max_tokens`` above its output limit; ``temperature`` and ``top_p`` together
  on the models that refuse the pair (Sonnet 4.5, Haiku 4.5, Opus 4.1 and later); thinking on a model
  without extended thinking; ``budget_tokens`` below 1024 or not below ``max_tokens``;
- a ``system`` role inside ``messages`` (the system prompt is the top-level ``system`` field);
- empty or whitespace-only text blocks;
- a ``tool_result`` whose ``tool_use_id`` is not a ``tool_use`` of the previous assistant message (an
  orphan tool result), and a ``tool_use`` without its ``tool_result`` in the next message;
- with thinking enabled, a final assistant turn with ``tool_use`` that does not start with a thinking
  block, or a thinking block whose ``signature`` this fake did not issue for that text (altered or
  stripped: ``Invalid `signature` in `thinking` block``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.agent_script import AgentSession, Seen, Turn, sign, tool_result_text

KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature", "top_p",
    "top_k", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
    "context_management", "output_config",
})


@dataclass(frozen=True)
class ClaudeModel:
    """What one Claude model takes (Anthropic's models overview: output limits, extended thinking; its
    migration guide for 4.5: temperature and top_p may not both be set)."""

    prefix: str
    max_output: int
    thinking: bool
    sampling_pair: bool  # temperature and top_p together allowed


MODELS = (
    ClaudeModel("claude-sonnet-4-5", 64_000, True, False),
    ClaudeModel("claude-haiku-4-5", 64_000, True, False),
    ClaudeModel("claude-opus-4-1", 32_000, True, False),
    ClaudeModel("claude-sonnet-4", 64_000, True, True),
    ClaudeModel("claude-3-5-haiku", 8_192, False, True),
)


def model_of(name: str) -> ClaudeModel | None:
    return next((m for m in MODELS if name.startswith(m.prefix)), None)


class Refusal(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or () if isinstance(b, dict)]


def check(body: Any, headers: dict[str, str]) -> ClaudeModel:
    if not headers.get("x-api-key"):
        raise Refusal("x-api-key header is required", 401, "authentication_error")
    if not headers.get("anthropic-version"):
        raise Refusal("anthropic-version: header is required")
    if not isinstance(body, dict):
        raise Refusal("The request body is not valid JSON.")
    for name in body:
        if name not in KNOWN_FIELDS:
            raise Refusal(f"{name}: Extra inputs are not permitted")
    model = model_of(str(body.get("model")))
    if model is None:
        raise Refusal(f"model: {body.get('model')}", 404, "not_found_error")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise Refusal("max_tokens: Field required")
    if max_tokens > model.max_output:
        raise Refusal(f"max_tokens: {max_tokens} > {model.max_output}, which is the maximum allowed number of "
                      f"output tokens for {body['model']}")
    if not model.sampling_pair and "temperature" in body and "top_p" in body:
        raise Refusal("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        if not model.thinking:
            raise Refusal(f"thinking: extended thinking is not supported by {body['model']}")
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise Refusal("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= max_tokens:
            raise Refusal("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                          "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking")
    elif thinking.get("type") not in (None, "disabled"):
        raise Refusal(f"thinking.type: Input tag '{thinking.get('type')}' found using 'type' does not match any "
                      "of the expected tags: 'disabled', 'enabled'")
    _check_messages(body.get("messages"), thinking.get("type") == "enabled")
    return model


def _check_messages(messages: Any, thinking: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise Refusal("messages: Field required")
    previous_uses: list[str] = []
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            raise Refusal('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                          'parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise Refusal(f"messages.{n}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(message.get("content"))
        for k, block in enumerate(blocks):
            if block.get("type") == "text" and not str(block.get("text", "")).strip():
                raise Refusal(f"messages.{n}.content.{k}: text content blocks must contain non-whitespace text")
            if block.get("type") == "thinking" and block.get("signature") != sign(str(block.get("thinking"))):
                raise Refusal(f"messages.{n}.content.{k}: Invalid `signature` in `thinking` block")
        results = [str(b.get("tool_use_id")) for b in blocks if b.get("type") == "tool_result"]
        orphans = [r for r in results if r not in previous_uses]
        if orphans:
            raise Refusal(f"messages.{n}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                          f"{', '.join(orphans)}. Each `tool_result` block must have a corresponding `tool_use` "
                          "block in the previous message.")
        missing = [u for u in previous_uses if u not in results]
        if missing:
            raise Refusal(f"messages.{n - 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                          f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                          "`tool_result` block in the next message.")
        previous_uses = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
    if previous_uses:
        raise Refusal(f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` blocks "
                      f"immediately after: {', '.join(previous_uses)}.")
    if thinking:
        _check_thinking_turn(messages)


def _check_thinking_turn(messages: list[dict[str, Any]]) -> None:
    """With thinking on, the last assistant turn that used tools must start with its thinking block."""
    for n in range(len(messages) - 1, -1, -1):
        message = messages[n]
        if message.get("role") != "assistant":
            continue
        blocks = _blocks(message.get("content"))
        if any(b.get("type") == "tool_use" for b in blocks) and blocks[0].get("type") not in (
                "thinking", "redacted_thinking"):
            raise Refusal(f"messages.{n}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                          f"`{blocks[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must "
                          "start with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` "
                          "blocks). We recommend you include thinking blocks from previous turns. To avoid this "
                          "requirement, disable `thinking`.")
        return


def seen_of(body: dict[str, Any]) -> Seen:
    tools = tuple(str(t.get("name")) for t in body.get("tools") or () if isinstance(t, dict))
    results, calls = {}, []
    for message in body["messages"]:
        for block in _blocks(message.get("content")):
            if block.get("type") == "tool_result":
                results[str(block.get("tool_use_id"))] = tool_result_text(block.get("content"))
            elif block.get("type") == "tool_use":
                calls.append(str(block.get("id")))
    return Seen(tools=tools, results=results, calls=tuple(calls))


def content_of(turn: Turn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.thinking:
        blocks.append({"type": "thinking", "thinking": turn.thinking, "signature": sign(turn.thinking)})
    if turn.call_id:
        blocks.append({"type": "text", "text": "I'll write the file."})
        blocks.append({"type": "tool_use", "id": turn.call_id, "name": turn.tool, "input": turn.arguments})
    else:
        blocks.append({"type": "text", "text": turn.text})
    return blocks


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """The Messages stream (reference/provider-formats.md §2): thinking, signature, text and tool input
    as deltas, each block between its start and stop."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    out = [_event("message_start", {"message": start}), _event("ping", {})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"thinking": {"type": "thinking", "thinking": "", "signature": ""},
                 "text": {"type": "text", "text": ""},
                 "tool_use": {**block, "input": {}}}[kind]
        out.append(_event("content_block_start", {"index": index, "content_block": empty}))
        if kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                      {"type": "signature_delta", "signature": block["signature"]}]
        elif kind == "text":
            deltas = [{"type": "text_delta", "text": w} for w in re.findall(r"\S+\s*", block["text"])]
        else:
            raw = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": raw[i:i + 16]} for i in range(0, len(raw), 16)]
        out += [_event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
        out.append(_event("content_block_stop", {"index": index}))
    out.append(_event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                        "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    out.append(_event("message_stop", {}))
    return out


def create_app(session: AgentSession) -> Starlette:
    async def messages(request: Request) -> Response:
        headers = dict(request.headers)
        try:
            body = await request.json()
        except ValueError:
            body = None
        session.record(request.url.path, headers, body)
        try:
            check(body, headers)
        except Refusal as refusal:
            session.refuse(refusal.status, refusal.message)
            return JSONResponse({"type": "error", "error": {"type": refusal.kind, "message": refusal.message}},
                                status_code=refusal.status)
        thinking = (body.get("thinking") or {}).get("type") == "enabled"
        turn = session.decide(seen_of(body), thinking=thinking)
        message = {"id": f"msg_agent{len(session.requests)}", "type": "message", "role": "assistant",
                   "model": body["model"], "content": content_of(turn),
                   "stop_reason": "tool_use" if turn.call_id else "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": max(1, len(json.dumps(body["messages"])) // 4), "output_tokens": 20,
                             "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}
        if not body.get("stream"):
            return JSONResponse(message)

        async def frames() -> AsyncIterator[bytes]:
            for frame in stream_events(message):
                yield frame

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def count_tokens(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"input_tokens": max(1, len(json.dumps(body.get("messages"))) // 4)})

    routes = [Route("/v1/messages", messages, methods=["POST"]),
              Route("/v1/messages/count_tokens", count_tokens, methods=["POST"])]
    return Starlette(routes=routes)
