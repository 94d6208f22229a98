"""Gemini's Models API shape, for ``GET /v1beta/models`` and ``/v1beta/models/{model}``, and for Gemini
clients on ``GET /v1/models`` (the newest ``google-genai`` Python SDK calls ``/v1``): ``{"models": [Model],
"nextPageToken"}`` with Google's ``pageSize`` (default 50, at most 1000) and ``pageToken``.

The entries are the gateway's own listing (``api/routes/listings.py`` chooses them: the chat models of
configured providers), written as Gemini's ``Model``: ``name`` is ``models/`` and the id a client passes to
``generateContent`` (``models/openai/gpt-4o-mini``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from common.errors import invalid

PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000  # ai.google.dev/api/models#method:-models.list
METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


def wants_gemini(headers: Mapping[str, str]) -> bool:
    """Both Google SDKs send ``x-goog-api-client`` on every request (and the key as ``x-goog-api-key``)."""
    return "x-goog-api-client" in headers or "x-goog-api-key" in headers


def gemini_model(entry: dict[str, Any]) -> dict[str, Any]:
    """One listing entry as Gemini's ``Model``."""
    return {
        "name": "models/" + entry["id"],
        "baseModelId": entry["id"],
        "displayName": entry.get("name") or entry["id"],
        "description": entry.get("description") or "",
        "inputTokenLimit": entry.get("context_length") or 0,
        "outputTokenLimit": entry.get("max_output_tokens") or 0,
        "supportedGenerationMethods": METHODS,
        "thinking": "reasoning" in (entry.get("supported_parameters") or ()),
    }


class GeminiModels:
    """One listing's ``Model`` objects, built once; a page is a slice."""

    def __init__(self, entries: Iterable[dict[str, Any]]) -> None:
        self.models = [gemini_model(e) for e in entries]
        self.by_id = {m["baseModelId"]: m for m in self.models}

    def page(self, query: Mapping[str, str]) -> dict[str, Any]:
        try:
            size = int(query.get("pageSize") or PAGE_SIZE)
            start = int(query.get("pageToken") or 0)
        except ValueError:
            raise invalid("pageSize is a number and pageToken one this list returned.", param="pageToken") from None
        if size < 1 or not 0 <= start <= len(self.models):
            raise invalid("pageSize must be positive and pageToken one this list returned.", param="pageToken")
        size = min(size, MAX_PAGE_SIZE)
        body: dict[str, Any] = {"models": self.models[start:start + size]}
        if start + size < len(self.models):
            body["nextPageToken"] = str(start + size)
        return body

    def get(self, model_id: str, served_as: str | None = None) -> dict[str, Any] | None:
        """The model listed as ``served_as`` (an alias's target), named as the client asked for it."""
        found = self.by_id.get(model_id) or (self.by_id.get(served_as) if served_as else None)
        if found is None or found["baseModelId"] == model_id:
            return found
        return {**found, "name": "models/" + model_id}
