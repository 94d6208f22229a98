"""Usage accounting, done in the worker so counting never slows the web tier's request path.

Per API key (``job.meta['key_id']``), UTC day and model: requests, prompt/completion tokens and cost
(layout in common/usage.py), summed in the process's tally and written with the next flush. The same flush
settles the request's budget reservation (api/limits.py), or gives it back when the request failed. Requests without a key are counted under the
``anonymous`` id, so operators can see what the free tier serves (``megabrain keys usage anonymous``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from common.usage import ANONYMOUS, add_usage, release
from common.wire import Job, Route
from workers.runtime import Runtime


async def record(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any] | None) -> None:
    """Count one served request (tokens, cost) for its API key (``job.meta['key_id']``), day and model."""
    key_id = str(job.meta.get("key_id") or ANONYMOUS)
    usage = usage or {}
    add_usage(
        runtime.tally,
        runtime.names,
        key_id,
        route.model,
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        _cost(usage.get("cost")),
        reserved=job.reserved,
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
