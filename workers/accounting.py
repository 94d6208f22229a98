"""Usage accounting, done in the worker so counting never slows the web tier's request path.

Per API key (``job.meta['key_id']``), UTC day and model: requests, prompt/completion tokens and cost
(layout in common/usage.py), and the same per account for a signed-in user's key (``job.meta['account']``),
summed in the process's tally and written with the next flush. The same flush
settles the request's budget reservation (api/access/limits.py), or gives it back when the request failed. Requests without a key are counted under the
``anonymous`` id, so operators can see what the free tier serves (``megabrain keys usage anonymous``).
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from common.usage import ANONYMOUS, GENERATION_TTL_SECONDS, Generation, add_usage, generation_encoder, release
from common.wire import Job, Route
from workers.runtime import Runtime


async def record(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any] | None,
                 seconds: float = 0.0) -> None:
    """Count one served request (tokens, cost) for its API key (``job.meta['key_id']``), day and model,
    and keep its generation record for the key to look up (same batched write)."""
    key_id = str(job.meta.get("key_id") or ANONYMOUS)
    usage = usage or {}
    cost = _cost(usage.get("cost"))
    add_usage(
        runtime.tally,
        runtime.names,
        key_id,
        route.model,
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        cost,
        reserved=job.reserved,
        account=job.meta.get("account") or None,
    )
    if key_id != ANONYMOUS and job.kind == "chat":
        runtime.tally.set(runtime.names.generation(job.request_id),
                          generation_encoder.encode(generation(runtime, job, route, usage, cost, seconds)),
                          GENERATION_TTL_SECONDS)


def generation(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any], cost: str,
               seconds: float) -> Generation:
    model = runtime.catalog.get(route.model)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Generation(
        id=f"chatcmpl-{job.request_id}", key_id=str(job.meta.get("key_id")), model=route.model,
        canonical=model.slug if model is not None else route.model, provider=route.provider,
        created=time.time(), prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(prompt_details.get("cached_tokens")),
        cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
        reasoning_tokens=_count(completion_details.get("reasoning_tokens")), cost=cost,
        latency_ms=round(seconds * 1000), finish_reason=usage.get("finish_reason"), streamed=job.stream,
        upstream_model=route.upstream_model,
    )


def release_reservation(runtime: Runtime, job: Job) -> None:
    """A request that ends without usage (failed, cancelled) gives its budget reservation back."""
    release(runtime.tally, runtime.names, str(job.meta.get("key_id") or ANONYMOUS), job.reserved)


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _cost(value: Any) -> str:
    """A decimal string Redis' INCRBYFLOAT accepts; anything unparsable or negative counts as zero."""
    try:
        cost = Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return "0"
    if not cost.is_finite() or cost < 0:
        return "0"
    return format(cost, "f")
