"""A request's plan: the ordered candidates (provider pool, model) a request may be served by.

Pure: it reads the catalog, the providers' configuration and health, and returns a list. The first
candidate is tried first; a worker hands the job to the next one when a provider fails before the first
token reached the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import weakref
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from common.errors import GatewayError
from common.wire import ProviderPreferences, Route
from router.auto import Health, choose, estimate_prompt_tokens, no_model_available, wants_vision
from router.catalog import AUTO_MODELS, Catalog, Model
from router.health import HealthSnapshot
from router.preferences import (
    FREE_VARIANT, Latency, arrange, hidden_free, price_of, select, split_variant, tie_runs,
)

Healthy = Callable[[str, str], bool]  # (provider, model id) -> circuit closed?

# An auto plan holds the chosen model and this many minus one fallbacks: enough to ride out a provider
# outage, few enough that a doomed request fails in bounded time.
MAX_AUTO_CANDIDATES = 5


def _always_healthy(provider: str, model_id: str) -> bool:
    return True


def plan_for(
    catalog: Catalog,
    model_id: str | None,
    *,
    extra_models: list[str] | None = None,
    healthy: Healthy = _always_healthy,
    modality: str = "chat",
    health: HealthSnapshot | None = None,
    health_score: Health | None = None,
    messages: Iterable[Any] | None = None,
    tools: list[Any] | None = None,
    output_tokens: int | None = None,
    preferences: ProviderPreferences | None = None,
    parameters: frozenset[str] = frozenset(),
    affinity: str = "",
) -> list[Route]:
    """Candidates for ``model_id`` (then the client's ``models`` list), configured providers only.

    ``model_id`` is a canonical ``author/model`` id (every endpoint of the model, ordered by
    ``router/preferences.py``'s rule), a ``provider/model`` endpoint id (that endpoint first, the model's
    other endpoints after it), a bare id or alias, optionally with a variant (``:floor``, ``:nitro``,
    ``:free``); None means "the first of ``extra_models``". ``preferences`` is the client's ``provider``
    object, ``parameters`` the request's top-level fields (for ``require_parameters``), ``affinity`` who
    asks (a hash of the key), so equally good endpoints are chosen per caller and stay chosen.

    ``health`` (the gateway's snapshot) stands for both ``healthy`` and ``health_score``. The auto ids
    (``auto``, ``auto-free``, …) are planned by ``router.auto.choose`` from what the request needs:
    ``messages`` and ``tools`` (dicts or msgspec Structs) and ``output_tokens`` (the client's max tokens).
    """
    extra = list(extra_models or ())
    if model_id is None:
        if not extra:
            raise GatewayError("invalid_request", "Send 'model' or a non-empty 'models' list.", param="model")
        model_id, extra = extra[0], extra[1:]
    latency: Latency = lambda provider, model: None  # noqa: E731
    if health is not None:
        # a snapshot without open or half-open circuits has nothing to say about order: skip the checks
        healthy = health.healthy if health.open_circuits or health.half_open else _always_healthy
        health_score = health_score or snapshot_score(health)
        latency = health.latency
    if model_id in AUTO_MODELS:
        chosen = _auto_plan(
            catalog, model_id, extra, modality=modality, messages=messages, tools=tools,
            output_tokens=output_tokens, score=health_score or _score_from_healthy(healthy),
        )
        if preferences is None:
            return chosen
        allowed = select([m for r in chosen if (m := catalog.get(r.model)) is not None], preferences,
                         variant=None, parameters=parameters, display=_display(catalog),
                         data_policy=_data_policy(catalog), model_id=model_id)
        kept = {m.id for m in allowed}
        return [r for r in chosen if r.model in kept]
    routes: list[Route] = []
    seen: set[str] = set()
    for position, requested in enumerate([model_id, *extra]):
        try:
            found = _endpoint_routes(catalog, requested, modality=modality, preferences=preferences,
                                     parameters=parameters, healthy=healthy, latency=latency, affinity=affinity)
        except GatewayError:
            if position == 0:
                raise
            continue  # a fallback the preferences rule out is skipped; the first model's error is the one told
        for route in found:
            if route.model not in seen:
                seen.add(route.model)
                routes.append(route)
    return routes


@dataclass(frozen=True, slots=True)
class Candidates:
    """What one client model id plans to before health and preferences: worked out once per catalog and
    id (``_candidates``), so a request's planning is a dictionary hit plus a pass over the endpoints."""

    pinned: Model | None
    variant: str | None
    endpoints: tuple[Model, ...]  # configured, same modality, sorted by price then registry order
    routes: dict[str, Route]  # endpoint id -> its Route
    prices: dict[str, Decimal]
    ties: tuple[tuple[int, int], ...]  # runs of equal prices in ``endpoints``: the caller's hash picks among them


_CACHE_LIMIT = 20_000  # distinct client ids remembered per catalog (clients choose the ids)
_CANDIDATES: "weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], Candidates]]" = weakref.WeakKeyDictionary()


def _candidates(catalog: Catalog, model_id: str, modality: str) -> Candidates:
    cache = _CANDIDATES.get(catalog)
    if cache is None:
        cache = _CANDIDATES[catalog] = {}
    found = cache.get((model_id, modality))
    if found is None:
        found = _work_out(catalog, model_id, modality)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[(model_id, modality)] = found
    return found


def _work_out(catalog: Catalog, model_id: str, modality: str) -> Candidates:
    pinned, slug, variant, upstream_override = _lookup(catalog, model_id)
    first = pinned or catalog.endpoints_of(slug or "")[0]
    _check_modality(first, modality)
    if pinned is None:
        endpoints = [m for m in catalog.endpoints_of(first.slug) if m.modality == first.modality]
    else:
        endpoints = [m for m in _expand(catalog, first) if m.modality == first.modality]
    if variant != FREE_VARIANT:  # unless a model has nothing but its free copies
        endpoints = [m for m in endpoints if not hidden_free(m) or m is pinned] or endpoints
    configured = [m for m in dict.fromkeys(endpoints) if _configured(catalog, m.provider)]
    if not configured:
        provider = catalog.providers.get(first.provider)
        name = provider.name if provider else first.provider
        raise GatewayError(
            "temporarily_unavailable",
            f"The model {model_id!r} is known, but its provider {name} is not configured on this gateway.",
            retry_after=60,
            param="model",
        )
    rank = _registry_order(catalog)
    prices = {m.id: price_of(m) for m in configured}
    configured.sort(key=lambda m: (prices[m.id], rank.get(m.provider, len(rank)), m.id))
    routes = {m.id: Route(provider=m.provider, model=m.id,
                          upstream_model=upstream_override if m is pinned and upstream_override else m.upstream_id)
              for m in configured}
    return Candidates(pinned=pinned, variant=variant, endpoints=tuple(configured), routes=routes, prices=prices,
                      ties=tie_runs(configured, prices))


def _endpoint_routes(
    catalog: Catalog,
    model_id: str,
    *,
    modality: str,
    preferences: ProviderPreferences | None,
    parameters: frozenset[str],
    healthy: Healthy,
    latency: Latency,
    affinity: str,
) -> list[Route]:
    """One requested id's endpoints, filtered and ordered (see ``plan_for``)."""
    found = _candidates(catalog, model_id, modality)
    allowed: list[Model] | tuple[Model, ...] = found.endpoints
    display = _display(catalog)
    if preferences is not None or found.variant == FREE_VARIANT:
        allowed = select(list(allowed), preferences, variant=found.variant, parameters=parameters,
                         display=display, data_policy=_data_policy(catalog), model_id=model_id)
    ordered = arrange(allowed, preferences, variant=found.variant, healthy=healthy, latency=latency,
                      prices=found.prices, ties=found.ties if allowed is found.endpoints else None,
                      affinity=affinity,
                      pinned=found.pinned if found.pinned in allowed else None, display=display)
    return [found.routes[m.id] for m in ordered]


def _lookup(catalog: Catalog, model_id: str) -> tuple[Model | None, str | None, str | None, str | None]:
    """(pinned endpoint, canonical id, variant, upstream id override) for a client's model id.

    An exact endpoint id pins; a canonical id (any case, optionally with a variant) is the model at all
    its endpoints; then aliases and bare ids; then a dated snapshot of a known model, priced as it; else
    the catalog's 404."""
    exact = catalog.models.get(model_id)
    if exact is not None:
        return exact, None, None, None
    base_id, variant = split_variant(model_id)
    slug = catalog.canonical(base_id)
    if slug is not None:
        return None, slug, variant, None
    named = catalog.get(model_id)
    if named is not None:
        return named, None, None, None
    named = catalog.get(base_id)
    if named is not None:
        return named, None, variant, None
    dated = catalog.snapshot(base_id)
    if dated is not None:
        return dated[0], None, variant, dated[1]
    catalog.resolve(base_id)  # raises the 404 with its hints
    raise AssertionError("unreachable")


def _expand(catalog: Catalog, model: Model) -> list[Model]:
    """The model itself, the same model at other providers, then its configured fallbacks."""
    result = [model]
    if model.listed:
        result += [m for m in catalog.serving(model) if m.id != model.id]
    for fallback in model.fallbacks:
        alt = catalog.get(fallback)
        if alt is not None:
            result.append(alt)
    return result


def _display(catalog: Catalog) -> dict[str, str]:
    return _static(catalog)[0]


def _data_policy(catalog: Catalog) -> dict[str, str]:
    return _static(catalog)[1]


def _registry_order(catalog: Catalog) -> dict[str, int]:
    return _static(catalog)[2]


_STATIC: "weakref.WeakKeyDictionary[Catalog, tuple[dict[str, str], dict[str, str], dict[str, int]]]" = (
    weakref.WeakKeyDictionary()
)


def _static(catalog: Catalog) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Per catalog, once: provider display names, data policies and registry order."""
    found = _STATIC.get(catalog)
    if found is None:
        providers = catalog.providers
        found = ({pid: p.name for pid, p in providers.items()},
                 {pid: p.data_collection for pid, p in providers.items()},
                 {pid: i for i, pid in enumerate(providers)})
        _STATIC[catalog] = found
    return found


def _configured(catalog: Catalog, provider_id: str) -> bool:
    provider = catalog.providers.get(provider_id)
    return provider is not None and provider.configured


def _check_modality(model: Model, modality: str) -> None:
    if model.modality != modality:
        raise GatewayError(
            "invalid_request",
            f"The model {model.id!r} is a {model.modality} model; this endpoint needs a {modality} model.",
            param="model",
        )


# --- the auto ids -----------------------------------------------------------------------------------------


def snapshot_score(snapshot: HealthSnapshot) -> Health:
    """The auto router's badness score from a health snapshot: 1 for an open circuit, else the error rate
    (None = no data, counted as healthy).

    Read from the snapshot's fields, not through ``healthy()``: that call hands out a half-open circuit's
    single trial, and ranking hundreds of candidates must not use it up.
    """

    def score(provider: str, model_id: str) -> float | None:
        if provider in snapshot.open_circuits or f"{provider}|{model_id}" in snapshot.open_circuits:
            return 1.0
        return snapshot.error_rate(provider, model_id)

    return score


def _score_from_healthy(healthy: Healthy) -> Health:
    """A score from a yes/no health callback: an open circuit is "down", everything else "no data".

    The web tier passes ``gateway.health.healthy``; for a snapshot's own method the snapshot is read
    directly instead (error rates included, no trial consumed).
    """
    snapshot = getattr(healthy, "__self__", None)
    if isinstance(snapshot, HealthSnapshot):
        return snapshot_score(snapshot)
    return lambda provider, model_id: None if healthy(provider, model_id) else 1.0


def _auto_plan(
    catalog: Catalog,
    kind: str,
    extra_models: Iterable[str],
    *,
    modality: str,
    messages: Iterable[Any] | None,
    tools: list[Any] | None,
    output_tokens: int | None,
    score: Health,
) -> list[Route]:
    """The best models for what the request needs, then the client's own ``models`` list.

    ``auto-free`` keeps the promise in its name everywhere in the plan: a paid model the client listed in
    ``models`` is dropped rather than tried.
    """
    if modality != "chat":
        raise GatewayError(
            "invalid_request", f"{kind!r} picks chat models; this endpoint needs a {modality} model.", param="model"
        )
    plain_messages = _builtins(list(messages or ()))
    plain_tools = _builtins(list(tools)) if tools else None
    needs_tools = bool(plain_tools)
    needs_vision = wants_vision(plain_messages)
    prompt_tokens = estimate_prompt_tokens(plain_messages, plain_tools)
    chosen = choose(
        catalog, kind, needs_tools=needs_tools, needs_vision=needs_vision, prompt_tokens=prompt_tokens,
        health=score, output_tokens=output_tokens,
    )[:MAX_AUTO_CANDIDATES]
    for requested in extra_models:
        model = catalog.resolve(requested)
        if model in chosen or not _configured(catalog, model.provider) or model.modality != "chat":
            continue
        if kind == "auto-free" and not model.free:
            continue
        chosen.append(model)
    if not chosen:
        no_model_available(kind, needs_tools=needs_tools, needs_vision=needs_vision, prompt_tokens=prompt_tokens)
    return [Route(provider=m.provider, model=m.id, upstream_model=m.upstream_id) for m in chosen]


def _builtins(items: list[Any]) -> list[Any]:
    """Request parts as plain dicts: the web tier hands over msgspec Structs, tests and tools plain dicts."""
    if all(isinstance(item, dict) for item in items):
        return items
    return [item if isinstance(item, dict) else msgspec.to_builtins(item) for item in items]
