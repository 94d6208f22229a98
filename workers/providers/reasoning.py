"""The canonical reasoning fields every adapter reads and writes (OpenRouter's spelling).

In: ``reasoning: {effort, max_tokens, exclude, enabled}`` or the flat ``reasoning_effort``; one reading of
both, so adapters only decide how their provider expresses it. Out: ``reasoning`` (text) plus
``reasoning_details`` (typed list: ``reasoning.text`` with its ``signature``, ``reasoning.encrypted``,
``reasoning.summary``), built here so every adapter spells them the same. Back: the details a client
returns on an assistant message, with streamed pieces of one ``index`` joined again.
"""

from __future__ import annotations

from typing import Any

from router.shaping import EFFORTS, Reasoning, joined_details, requested

# What a request asks for is read in one place, shared with admission's output plan (router/shaping.py).
__all__ = ["EFFORTS", "Reasoning", "requested", "excluded", "text_detail", "encrypted_detail", "returned_details"]


def excluded(body: dict[str, Any]) -> bool:
    """``reasoning.exclude``: the model reasons, the answer carries none of it."""
    raw = body.get("reasoning")
    return isinstance(raw, dict) and bool(raw.get("exclude"))


def text_detail(text: str, fmt: str, index: int, signature: str | None = None) -> dict[str, Any]:
    return {"type": "reasoning.text", "text": text, "signature": signature, "format": fmt, "index": index}


def encrypted_detail(data: str, fmt: str, index: int) -> dict[str, Any]:
    return {"type": "reasoning.encrypted", "data": data, "format": fmt, "index": index}


def returned_details(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's ``reasoning_details``, streamed pieces of one ``index`` joined in order
    (``router.shaping.joined_details``: a client that accumulated a stream may send every piece back)."""
    details = message.get("reasoning_details")
    return joined_details(details) if isinstance(details, list) else []
