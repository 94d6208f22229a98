"""Shaping what the client sees: OpenAI completions and SSE chunk frames, the same for every provider.

Adapters produce OpenAI-shaped dicts; this module stamps our id, model and provider on them, makes the
first chunk carry the role, keeps tool-call indexes stable, takes usage from wherever the provider put
it, and frames the result as ``data: {...}\\n\\n``. The usage chunk goes to the client only when it asked
(``stream_options.include_usage``), but usage is always collected for accounting.

Reasoning (``delta.reasoning`` / ``reasoning_details``) is sent the moment it arrives: a thinking model
may reason for a minute before its first content token. ``reasoning.exclude`` removes it here, for
every provider. ``usage.cost`` is an exact ``Decimal`` inside and a JSON number on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

# Every JSON body a worker writes for a client: Decimals (usage.cost) become JSON numbers, digits exact.
encode_json = msgspec.json.Encoder(decimal_format="number").encode
_encode = encode_json
DONE_FRAME = b"data: [DONE]\n\n"

CostFn = Callable[[dict[str, Any]], Decimal]  # canonical usage -> USD
REASONING_FIELDS = ("reasoning", "reasoning_details", "reasoning_content")


def frame(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def add_cost(usage: dict[str, Any] | None, cost: CostFn | None) -> dict[str, Any] | None:
    if usage and cost is not None:
        usage["cost"] = cost(usage)
    return usage


def drop_reasoning(part: dict[str, Any]) -> None:
    """``reasoning.exclude``: the model's reasoning never reaches the client (it is still billed)."""
    for name in REASONING_FIELDS:
        part.pop(name, None)


def finish_completion(
    completion: dict[str, Any], *, request_id: str, model: str, provider: str, cost: CostFn | None = None,
    exclude_reasoning: bool = False,
) -> dict[str, Any]:
    """Stamp a non-streaming completion with our id, the model actually used and who served it."""
    completion["id"] = f"chatcmpl-{request_id}"
    completion["object"] = "chat.completion"
    completion.setdefault("created", int(time.time()))
    completion["model"] = model
    completion["provider"] = provider
    for index, choice in enumerate(completion.get("choices") or ()):
        choice.setdefault("index", index)
        choice.setdefault("logprobs", None)
        message = choice.setdefault("message", {})
        message.setdefault("role", "assistant")
        message.setdefault("content", None)
        if exclude_reasoning:
            drop_reasoning(message)
    add_cost(completion.get("usage"), cost)
    return completion


class ChunkShaper:
    """Turns a provider's chunk dicts into the client's SSE frames for one stream."""

    def __init__(self, *, request_id: str, model: str, provider: str, include_usage: bool,
                 cost: CostFn | None = None, exclude_reasoning: bool = False) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.provider = provider
        self.created = int(time.time())
        self.include_usage = include_usage
        self.cost = cost
        self.exclude_reasoning = exclude_reasoning
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.completion_chars = 0
        self._role_sent = False
        self._held: list[dict[str, Any]] = []  # role-only chunks, held until there is content
        self._tool_index: dict[tuple[int, str], int] = {}  # (choice, call id) -> index, for providers omitting it

    def shape(self, chunk: dict[str, Any]) -> bytes:
        """Frames for one provider chunk; empty until the stream has something worth committing to."""
        usage = chunk.pop("usage", None)
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            return b""  # a usage-only chunk (choices [] or null): emitted at the end if asked
        chunk["id"] = self.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self.created
        chunk["model"] = self.model
        chunk["provider"] = self.provider
        substantive = False
        for choice in choices:
            delta = choice.setdefault("delta", {})
            if self.exclude_reasoning:
                drop_reasoning(delta)
            choice.setdefault("logprobs", None)
            choice.setdefault("finish_reason", None)
            if choice["finish_reason"]:
                self.finish_reason = choice["finish_reason"]
                substantive = True
            content = delta.get("content")
            if content:
                self.completion_chars += len(content)
                substantive = True
            if delta.get("tool_calls"):
                self._fix_tool_indexes(choice.get("index", 0), delta["tool_calls"])
                substantive = True
            if not substantive and (delta.get("refusal") or delta.get("reasoning")
                                    or delta.get("reasoning_details") or delta.get("reasoning_content")):
                substantive = True  # reasoning goes out the moment it arrives, not with the first token
        if not substantive:
            self._held.append(chunk)
            return b""
        out = b""
        if not self._role_sent:
            first = self._held[0] if self._held else chunk
            first["choices"][0]["delta"].setdefault("role", "assistant")
            self._role_sent = True
        for held in self._held:
            out += frame(held)
        self._held.clear()
        return out + frame(chunk)

    def _fix_tool_indexes(self, choice_index: int, calls: list[dict[str, Any]]) -> None:
        for position, call in enumerate(calls):
            if "index" in call:
                continue
            call_id = call.get("id")
            key = (choice_index, call_id or "")
            if call_id and key not in self._tool_index:
                self._tool_index[key] = len([k for k in self._tool_index if k[0] == choice_index])
            call["index"] = self._tool_index.get(key, position)

    def finish(self) -> bytes:
        """The closing frames: held chunks, the usage chunk if the client asked, then ``[DONE]``."""
        out = b"".join(frame(c) for c in self._held)
        self._held.clear()
        add_cost(self.usage, self.cost)
        if self.include_usage and self.usage:
            out += frame({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "provider": self.provider, "choices": [], "usage": self.usage,
            })
        return out + DONE_FRAME
