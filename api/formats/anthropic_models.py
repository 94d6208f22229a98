"""Anthropic's Models API shape, for clients that send ``anthropic-version`` to ``GET /v1/models`` and
``GET /v1/models/{id}`` (the Anthropic SDKs' ``models.list()`` / ``models.retrieve()``).

The same listing as the OpenAI-shaped one (``api/routes/listings.py`` chooses the models), written as
Anthropic's ``ModelInfo`` objects, newest first (as Anthropic orders its list), in pages:
``limit`` 1–1000 (default 20), ``after_id`` / ``before_id`` cursors, ``has_more``, ``first_id`` and
``last_id`` (API reference, "List Models"; the SDK's ``SyncPage`` follows ``last_id`` as ``after_id``).
A client gets 20 small objects, not the multi-megabyte OpenAI-shaped list it cannot read.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from common.errors import GatewayError

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def wants_anthropic(headers: Mapping[str, str]) -> bool:
    """The Anthropic SDKs send ``anthropic-version`` on every request; OpenAI's never do."""
    return "anthropic-version" in headers


def _rfc3339(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(entry: dict[str, Any]) -> dict[str, Any]:
    """One listing entry (``api/routes/listings.py``) as Anthropic's ``ModelInfo``; an unknown release
    date is the epoch, as Anthropic documents."""
    return {
        "type": "model",
        "id": entry["id"],
        "display_name": entry.get("name") or entry["id"],
        "created_at": _rfc3339(int(entry.get("created") or 0)),
        "lifecycle": "deprecated" if entry.get("deprecated") else "active",
        "deprecated_at": None,
        "retires_at": None,
        "max_input_tokens": entry.get("context_length"),
        "max_tokens": entry.get("max_output_tokens"),
    }


class ModelPages:
    """One listing's ``ModelInfo`` objects in order, built once per listing; a page is a slice."""

    def __init__(self, entries: Iterable[dict[str, Any]]) -> None:
        ordered = sorted(entries, key=lambda e: (-int(e.get("created") or 0), e["id"]))
        self.infos = [model_info(e) for e in ordered]
        self.position = {info["id"]: n for n, info in enumerate(self.infos)}

    def page(self, query: Mapping[str, str]) -> dict[str, Any]:
        limit = _limit(query.get("limit"))
        after, before = query.get("after_id"), query.get("before_id")
        if after and before:
            raise GatewayError("invalid_request", "Send after_id or before_id, not both.", param="before_id")
        if after:
            start = self._at(after, "after_id") + 1
            items = self.infos[start:start + limit]
            has_more = start + limit < len(self.infos)
        elif before:
            end = self._at(before, "before_id")
            items = self.infos[max(0, end - limit):end]
            has_more = end - limit > 0
        else:
            items = self.infos[:limit]
            has_more = limit < len(self.infos)
        return {"data": items, "has_more": has_more, "first_id": items[0]["id"] if items else None,
                "last_id": items[-1]["id"] if items else None}

    def _at(self, model_id: str, param: str) -> int:
        position = self.position.get(model_id)
        if position is None:
            raise GatewayError("invalid_request", f"{param} {model_id!r} is not a model in this list.", param=param)
        return position


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise GatewayError("invalid_request", f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw!r}.",
                           param="limit")
    return limit
