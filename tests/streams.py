"""Streams as clients read them: SSE parsing and chat-chunk reassembly (imported through tests/harness.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from workers.sse import SSEDecoder


def sse_events(body: str | bytes) -> list[tuple[str | None, str]]:
    """Every ``(event name, data)`` of a whole SSE body, by the decoder the workers read upstreams with
    (workers/sse.py, held to the spec's line ends and comments by tests/test_sse.py)."""
    decoder = SSEDecoder()
    return decoder.feed(body.encode() if isinstance(body, str) else body) + decoder.close()


def sse_data(response: httpx.Response) -> Iterator[str]:
    """The ``data:`` payloads of a streaming response, each as soon as its event is complete."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        for _, data in decoder.feed(chunk):
            yield data
    for _, data in decoder.close():
        yield data


def reassemble(chunks: Iterable[Any]) -> dict[str, Any]:
    """A streamed chat answer put together the way SDK users do: ``text``, ``reasoning``, ``calls`` (by
    index: id, name, arguments), ``finish``, ``usage`` (the last one sent), ``ids`` and ``first_role``.
    ``chunks`` are the SDK's chunk objects, decoded dicts, or ``data:`` payloads (``[DONE]`` is skipped)."""
    text, reasoning, finish, usage, ids, roles = "", "", None, None, set(), []
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if isinstance(chunk, str):
            if chunk == "[DONE]":
                continue
            chunk = json.loads(chunk)
        elif not isinstance(chunk, dict):
            chunk = chunk.model_dump()
        if "id" in chunk:
            ids.add(chunk["id"])
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            roles.append(delta.get("role"))
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning") or ""
            finish = choice.get("finish_reason") or finish
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.get("id") or ""
                function = call.get("function") or {}
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
    return {"text": text, "reasoning": reasoning, "finish": finish, "usage": usage, "ids": ids,
            "first_role": roles[0] if roles else None, "calls": [calls[i] for i in sorted(calls)]}
