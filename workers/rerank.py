"""One rerank at one provider: Cohere's, Jina's, Voyage's or Together's answer, in Cohere's shape.

The upstream is sent the texts only (``return_documents`` is answered here, from the request, so the
documents never travel back); its results (``results`` or Voyage's ``data``) come back sorted by
relevance. Cost: search units at the model's price (Cohere reports them; else one per 100 documents),
or tokens at its per-token price (the upstream's count, else characters / 4).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.wire import Job, Route
from router.media import rerank_spec, search_units
from workers.chunks import encode_json
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import send_json


def texts_of(documents: list[Any]) -> list[str]:
    return [d.get("text", "") if isinstance(d, dict) else str(d) for d in documents]


def ranked(data: Any, count: int) -> list[dict[str, Any]]:
    items = (data.get("results") if isinstance(data.get("results"), list) else data.get("data")) \
        if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UpstreamError(502, "upstream returned a rerank answer without results", retryable=True)
    results = []
    for item in items:
        index, score = (item.get("index"), item.get("relevance_score")) if isinstance(item, dict) else (None, None)
        if not isinstance(index, int) or not 0 <= index < count or not isinstance(score, (int, float)):
            raise UpstreamError(502, "upstream returned a malformed rerank result", retryable=True)
        results.append({"index": index, "relevance_score": score})
    return sorted(results, key=lambda r: -r["relevance_score"])


def rerank_usage(runtime: Runtime, route: Route, data: dict[str, Any], query: str, texts: list[str]) -> dict[str, Any]:
    model = runtime.catalog.get(route.model)
    billed = (data.get("meta") or {}).get("billed_units") or {} if isinstance(data.get("meta"), dict) else {}
    reported = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = reported.get("total_tokens")
    if not isinstance(tokens, int) or tokens < 0:
        tokens = max(1, (len(query) * len(texts) + sum(len(t) for t in texts)) // 4)
    units = billed.get("search_units")
    units = units if isinstance(units, int) and units > 0 else search_units(len(texts))
    usage: dict[str, Any] = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    if model is None or not model.listed or model.free:
        usage["cost"] = Decimal(0)
        return usage
    per_unit = rerank_spec(model).per_search_unit
    if per_unit is not None:
        usage["search_units"] = units
        usage["cost"] = per_unit * units
    else:
        usage["cost"] = Decimal(model.prompt_price) * tokens
    return usage


@handler("rerank")
async def serve_rerank(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "rerank_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no rerank", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    texts = texts_of(body.get("documents") or [])
    spec = adapter.rerank_request(runtime.upstream(route.provider), route.upstream_model, body, texts)
    data = await send_json(runtime.http, adapter, spec)
    results = ranked(data, len(texts))
    if body.get("return_documents"):
        for result in results:
            result["document"] = {"text": texts[result["index"]]}
    usage = rerank_usage(runtime, route, data, str(body.get("query") or ""), texts)
    answer = {"id": f"gen-{job.request_id}", "model": route.model, "provider": route.provider,
              "results": results, "usage": usage}
    return Answer("result", encode_json(answer), usage)
