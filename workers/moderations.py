"""One moderation at one provider: OpenAI's answer, stamped with who served it and its cost (0: free)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.wire import Job, Route
from workers.chunks import encode_json
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import send_json


@handler("moderation")
async def serve_moderation(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "moderations_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no moderations", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    spec = adapter.moderations_request(runtime.upstream(route.provider), route.upstream_model, body)
    data = await send_json(runtime.http, adapter, spec)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) or not data["results"]:
        raise UpstreamError(502, "upstream returned a moderation without results", retryable=True)
    data["id"] = f"modr-{job.request_id}"
    data["model"], data["provider"] = route.model, route.provider
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "cost": Decimal(0)}
    data["usage"] = {"cost": usage["cost"]}
    return Answer("result", encode_json(data), usage)
