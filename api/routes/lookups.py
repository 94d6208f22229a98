"""OpenRouter's lookups for the calling key: ``GET /api/v1/generation?id=``, ``GET /api/v1/key`` and
``GET /api/v1/credits`` (the prepaid credits of the key's account, ``common/ledger.py``).

A generation record is written with the request's usage, by the settlement that publishes its answer
(common/settlement.py; layout in common/usage.py), so it exists before the client has the answer's end.
It is readable only by the key that made the request: any other caller gets the same
404 as for an id that never existed, so ids cannot be probed.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.routes.admin import presented_key
from api.gateway import Gateway
from api.access.keys import KeyStore
from common.errors import GatewayError, invalid
from common.ledger import Ledger, usd
from common.usage import Generation, generation_decoder

_ID = re.compile(r"^(?:chatcmpl-|cmpl-|modr-|gen-)?([0-9a-f]{24})$")


def _json(payload: Any) -> Response:
    return Response(msgspec.json.encode(payload), media_type="application/json")


def generation_json(record: Generation) -> dict[str, Any]:
    """OpenRouter's generation fields (``tokens_*``, ``native_tokens_*``, ``total_cost``, ``latency``)
    plus the gateway's own names for the same facts."""
    cost = float(record.cost)
    return {
        "id": record.id,
        "model": record.canonical,
        "endpoint": record.model,
        "provider_name": record.provider,
        "upstream_id": record.upstream_model,
        "created_at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
        "tokens_prompt": record.prompt_tokens,
        "tokens_completion": record.completion_tokens,
        "native_tokens_prompt": record.prompt_tokens,
        "native_tokens_completion": record.completion_tokens,
        "native_tokens_cached": record.cached_tokens,
        "native_tokens_cache_write": record.cache_write_tokens,
        "native_tokens_reasoning": record.reasoning_tokens,
        "total_cost": cost,
        "usage": cost,
        "latency": record.latency_ms,
        "generation_time": record.latency_ms,
        "finish_reason": record.finish_reason,
        "native_finish_reason": record.finish_reason,
        "streamed": record.streamed,
    }


async def get_generation(request: Request) -> Response:
    record_key = await presented_key(request, "to look up its generations")
    raw_id = request.query_params.get("id") or ""
    match = _ID.match(raw_id)
    if match is None:
        raise invalid("id must be the 'id' of an answer this gateway gave (chatcmpl-…).", param="id")
    gateway: Gateway = request.app.state.gateway
    raw = await gateway.redis.get(gateway.names.generation(match.group(1)))
    record: Generation | None = None
    if raw:
        try:
            record = generation_decoder.decode(raw)
        except msgspec.DecodeError:
            record = None
    if record is None or record.key_id != record_key.id or record.status != 200:  # (failed: Activity only)
        raise GatewayError("not_found", f"There is no generation {raw_id!r} for this key (records of "
                           "answered requests are kept for 31 days).", param="id")
    return _json({"data": generation_json(record)})


async def get_key(request: Request) -> Response:
    """The calling key in OpenRouter's shape: label, usage (this month, USD), limit (monthly budget),
    rate limit, and whether it is limited to free models (a budget of 0). An account's key: ``limit`` is
    what its account was credited and ``limit_remaining`` what it may still spend (the lower of its
    available credits and what is left of a budget), ``is_free_tier`` until it was ever credited."""
    record = await presented_key(request, "to see it")
    gateway: Gateway = request.app.state.gateway
    spend = await KeyStore(gateway.redis, gateway.names).month_spend(record.id)
    budget = record.monthly_budget
    if record.owner is not None:
        balance = await Ledger(gateway.redis, gateway.names).balance(record.owner)
        available = float(usd(balance.available))
        return _json({"data": {
            "label": record.name, "name": record.name, "id": record.id, "usage": spend, "usage_monthly": spend,
            "limit": budget if budget is not None else float(usd(balance.total_credits)),
            "limit_remaining": available if budget is None else min(available, max(0.0, budget - spend)),
            "limit_reset": "monthly" if budget is not None else None,
            "is_free_tier": balance.total_credits <= 0 or budget == 0,
            "is_provisioning_key": False,
            "rate_limit": {"requests": record.rpm, "interval": "1m"} if record.rpm else None,
        }})
    return _json({"data": {
        "label": record.name,
        "name": record.name,
        "id": record.id,
        "usage": spend,
        "usage_monthly": spend,
        "limit": budget,
        "limit_remaining": None if budget is None else max(0.0, budget - spend),
        "limit_reset": "monthly" if budget is not None else None,
        "is_free_tier": budget == 0,
        "is_provisioning_key": False,
        "rate_limit": {"requests": record.rpm, "interval": "1m"} if record.rpm else None,
    }})


async def get_credits(request: Request) -> Response:
    """OpenRouter's shape: ``{"data": {"total_credits", "total_usage"}}`` in USD, for a signed-in user's
    key (its account's ledger); plus the exact balance and what requests in flight hold. An operator key
    (no account) has no credits: it spends the operator's provider credit, within its own budget."""
    record = await presented_key(request, "to see its credits")
    if record.owner is None:
        raise GatewayError("invalid_request", "This key was made by the operator and has no prepaid credits: it "
                           "is limited by its monthly budget (GET /api/v1/key). Credits belong to the keys of "
                           "signed-in accounts.")
    gateway: Gateway = request.app.state.gateway
    balance = await Ledger(gateway.redis, gateway.names).balance(record.owner)
    return _json({"data": {
        "total_credits": float(usd(balance.total_credits)),
        "total_usage": float(usd(balance.total_usage)),
        "balance": str(usd(balance.balance)),
        "held": str(usd(balance.held)),
        "available": str(usd(balance.available)),
    }})


ROUTES = [
    ("GET", "/generation", get_generation),
    ("GET", "/credits", get_credits),
    ("GET", "/key", get_key),
    ("GET", "/auth/key", get_key),  # OpenRouter's older spelling
]
