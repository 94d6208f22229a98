"""OpenRouter's ``provider`` preferences and model variants, applied to one model's endpoints.

Pure: a list of endpoints in, the ordered list out, or a ``GatewayError`` naming the preference that left
nothing (never a silent fallback to what the client excluded).

Default order (documented rule): endpoints whose circuit is open go last; the rest by price
(prompt + completion per token), cheapest first; equal prices in an order fixed per (caller, model), so one
key's requests keep hitting the same endpoint while it is healthy (prompt caches stay warm) while different
keys spread over equally cheap sellers; then registry order. Health snapshots move an endpoint only when
its circuit opens or closes, so they never reshuffle a key's choice.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from decimal import Decimal

from common.errors import GatewayError
from common.wire import ProviderPreferences
from router.model import Model

# Variants are suffixes of the model id: ``meta-llama/llama-3.3-70b-instruct:floor``.
SORT_VARIANTS = {"floor": "price", "nitro": "throughput"}
FREE_VARIANT = "free"
UNSUPPORTED_VARIANTS = {
    "online": "web search is not offered by this gateway",
    "thinking": "ask for reasoning with the 'reasoning' object or 'reasoning_effort' instead",
}
VARIANTS = frozenset({*SORT_VARIANTS, FREE_VARIANT, *UNSUPPORTED_VARIANTS})

# Request fields ``require_parameters`` checks against an endpoint's supported_parameters.
CHECKED_PARAMETERS = frozenset({
    "tools", "tool_choice", "response_format", "seed", "stop", "temperature", "top_p", "frequency_penalty",
    "presence_penalty", "reasoning", "include_reasoning", "structured_outputs",
})

Healthy = Callable[[str, str], bool]
Latency = Callable[[str, str], float | None]

_NO_PREFERENCES = ProviderPreferences()
_MILLION = Decimal(1_000_000)


def split_variant(model_id: str) -> tuple[str, str | None]:
    """(id without the variant, variant) — ``("x/y", "floor")`` for ``"x/y:floor"``; unknown suffixes stay."""
    base, sep, suffix = model_id.rpartition(":")
    if sep and base and suffix in VARIANTS:
        if suffix in UNSUPPORTED_VARIANTS:
            raise GatewayError("invalid_request", f"The ':{suffix}' variant is not supported here: "
                               f"{UNSUPPORTED_VARIANTS[suffix]}.", param="model")
        return base, suffix
    return model_id, None


def _names(provider_names: Iterable[str]) -> set[str]:
    return {name.lower() for name in provider_names}


def _matches(model: Model, names: set[str], display: dict[str, str]) -> bool:
    return model.provider.lower() in names or display.get(model.provider, "").lower() in names


def price_of(model: Model) -> Decimal:
    return Decimal(model.prompt_price) + Decimal(model.completion_price)


def select(
    endpoints: list[Model],
    preferences: ProviderPreferences | None,
    *,
    variant: str | None,
    parameters: frozenset[str] = frozenset(),
    display: dict[str, str] | None = None,
    data_policy: dict[str, str] | None = None,
    model_id: str = "",
) -> list[Model]:
    """The endpoints the preferences and the variant allow, in their given order; a 4xx naming the
    preference when they allow none. ``display``: provider id → name (``only: ["Together"]`` works);
    ``data_policy``: provider id → ``deny`` | ``unknown``."""
    prefs = preferences or _NO_PREFERENCES
    display = display or {}
    steps: list[tuple[str, str, Callable[[Model], bool]]] = []
    if variant == FREE_VARIANT:
        steps.append(("model", "the ':free' variant (free endpoints only)", lambda m: m.free))
    if prefs.only is not None:
        only = _names(prefs.only)
        steps.append(("provider.only", f"provider.only {sorted(only)}", lambda m: _matches(m, only, display)))
    if prefs.ignore:
        ignore = _names(prefs.ignore)
        steps.append(("provider.ignore", f"provider.ignore {sorted(ignore)}",
                      lambda m: not _matches(m, ignore, display)))
    if prefs.data_collection == "deny":
        policy = data_policy or {}
        steps.append(("provider.data_collection", "provider.data_collection 'deny' (providers known not to "
                      "train on or keep prompts)", lambda m: policy.get(m.provider) == "deny"))
    if prefs.quantizations is not None:
        wanted = _names(prefs.quantizations)
        steps.append(("provider.quantizations", f"provider.quantizations {sorted(wanted)}",
                      lambda m: (m.quantization or "unknown") in wanted))
    needed = parameters & CHECKED_PARAMETERS if prefs.require_parameters else frozenset()
    if needed:
        steps.append(("provider.require_parameters",
                      f"provider.require_parameters (the request uses {', '.join(sorted(needed))})",
                      lambda m: needed <= set(m.supported_parameters)))
    if prefs.max_price is not None:
        ceiling = prefs.max_price
        steps.append(("provider.max_price", "provider.max_price", lambda m: _within(m, ceiling.prompt,
                                                                                     ceiling.completion)))
    kept = endpoints
    for param, what, keep in steps:
        before = kept
        kept = [m for m in kept if keep(m)]
        if not kept and param == "provider.require_parameters":
            raise unsupported_parameter(model_id, needed, before)
        if not kept:
            raise GatewayError(
                "no_endpoints_found",
                f"No endpoint of {model_id!r} is left after {what}; {len(endpoints)} endpoint(s) were "
                "configured before it. GET /api/v1/models/<id>/endpoints lists them.",
                param=param,
            )
    return kept


def unsupported_parameter(model_id: str, needed: frozenset[str], endpoints: list[Model]) -> GatewayError:
    """The client required parameters no endpoint takes: a 400 naming the first one, never an upstream 400
    it cannot act on (and never a silent drop: it asked explicitly)."""
    missing = sorted(p for p in needed if not any(p in m.supported_parameters for m in endpoints))
    name = (missing or sorted(needed))[0]
    which = "no endpoint" if missing else "no single endpoint"
    return GatewayError(
        "invalid_request",
        f"{which.capitalize()} of {model_id!r} takes {', '.join(repr(p) for p in (missing or sorted(needed)))}, "
        f"which the request uses with provider.require_parameters ({len(endpoints)} endpoint(s) considered). "
        "Leave the parameter out, or drop require_parameters to let endpoints ignore what they do not take.",
        param=name,
    )


def _within(model: Model, prompt: float | None, completion: float | None) -> bool:
    if prompt is not None and Decimal(model.prompt_price) * _MILLION > Decimal(str(prompt)):
        return False
    if completion is not None and Decimal(model.completion_price) * _MILLION > Decimal(str(completion)):
        return False
    return True


def arrange(
    endpoints: list[Model] | tuple[Model, ...],
    preferences: ProviderPreferences | None,
    *,
    variant: str | None,
    healthy: Healthy,
    latency: Latency,
    prices: dict[str, Decimal],
    ties: tuple[tuple[int, int], ...] | None = None,
    affinity: str = "",
    pinned: Model | None = None,
    display: dict[str, str] | None = None,
) -> list[Model]:
    """The allowed endpoints in the order they are tried (see the module's rule), cut to the first one
    (or the ``order`` list) when ``allow_fallbacks`` is false.

    ``endpoints`` come sorted by price then registry order (the catalog's static part, worked out once);
    ``prices`` holds each one's price and ``ties`` the index ranges of equal prices in ``endpoints`` (None:
    find them here), so a request without preferences only rotates each run of equal prices by the
    caller's hash and moves open circuits last."""
    prefs = preferences or _NO_PREFERENCES
    sort = prefs.sort or SORT_VARIANTS.get(variant or "")
    ordered = list(endpoints)
    if sort in ("throughput", "latency"):
        def measured(m: Model) -> tuple[bool, float, Decimal]:
            seconds = latency(m.provider, m.id)
            return (seconds is None, seconds or 0.0, prices[m.id])

        ordered.sort(key=measured)
    elif affinity:
        turn = zlib.crc32(affinity.encode())
        for start, end in (tie_runs(ordered, prices) if ties is None else ties):
            shift = turn % (end - start)
            ordered[start:end] = ordered[start + shift:end] + ordered[start:start + shift]
    up = [m for m in ordered if healthy(m.provider, m.id)]
    if len(up) < len(ordered):
        ordered = up + [m for m in ordered if m not in up]
    if pinned is not None and pinned in up and not prefs.order and sort is None and ordered[0] is not pinned:
        ordered.remove(pinned)
        ordered.insert(0, pinned)
    if prefs.order:
        display = display or {}
        first: list[Model] = []
        for name in prefs.order:
            wanted = {name.lower()}
            first += [m for m in ordered if m not in first and _matches(m, wanted, display)]
        if not prefs.allow_fallbacks:
            return first or ordered[:1]
        return first + [m for m in ordered if m not in first]
    if not prefs.allow_fallbacks:
        return ordered[:1]
    return ordered


def tie_runs(endpoints: list[Model] | tuple[Model, ...], prices: dict[str, Decimal]) -> tuple[tuple[int, int], ...]:
    """Index ranges [start, end) of two or more consecutive endpoints with the same price."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(endpoints) + 1):
        if i == len(endpoints) or prices[endpoints[i].id] != prices[endpoints[start].id]:
            if i - start > 1:
                runs.append((start, i))
            start = i
    return tuple(runs)


def hidden_free(model: Model) -> bool:
    """OpenRouter-style ``:free`` endpoints (rate-limited free copies) serve only the ``:free`` variant or
    a request that names them."""
    return model.free and model.upstream_id.endswith(":free")
