"""A request's plan: the ordered candidates (provider pool, model) a request may be served by.

Pure: it reads the catalog, the providers' configuration and health, and returns a list. The first
candidate is tried first; a worker hands the job to the next one when a provider fails before the first
token reached the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from common.errors import GatewayError
from common.wire import Route
from router.auto import Health, choose, estimate_prompt_tokens, no_model_available, wants_vision
from router.catalog import AUTO_MODELS, Catalog, Model
from router.health import HealthSnapshot

Healthy = Callable[[str, str], bool]  # (provider, model id) -> circuit closed?

# An auto plan holds the chosen model and this many minus one fallbacks: enough to ride out a provider
# outage, few enough that a doomed request fails in bounded time.
MAX_AUTO_CANDIDATES = 5


def _always_healthy(provider: str, model_id: str) -> bool:
    return True


def plan_for(
    catalog: Catalog,
    model_id: str,
    *,
    extra_models: list[str] | None = None,
    healthy: Healthy = _always_healthy,
    modality: str = "chat",
    health: HealthSnapshot | None = None,
    health_score: Health | None = None,
    messages: Iterable[Any] | None = None,
    tools: list[Any] | None = None,
    output_tokens: int | None = None,
) -> list[Route]:
    """Candidates for ``model_id`` (then the client's ``models`` list), configured providers only.

    Healthy candidates come first; unhealthy ones stay at the end as a last resort rather than vanishing,
    so a request is never refused only because every circuit is open.

    ``health`` (the gateway's snapshot) stands for both ``healthy`` and ``health_score``. The auto ids
    (``auto``, ``auto-free``, …) are planned by ``router.auto.choose`` from what the request needs:
    ``messages`` and ``tools`` (dicts or msgspec Structs) and ``output_tokens`` (the client's max tokens).
    """
    if health is not None:
        healthy = health.healthy
        health_score = health_score or snapshot_score(health)
    if model_id in AUTO_MODELS:
        return _auto_plan(
            catalog, model_id, extra_models or (), modality=modality, messages=messages, tools=tools,
            output_tokens=output_tokens, score=health_score or _score_from_healthy(healthy),
        )
    first = catalog.resolve(model_id)
    _check_modality(first, modality)
    ordered: list[Model] = []
    for requested in [first, *(catalog.resolve(m) for m in extra_models or ())]:
        for candidate in _expand(catalog, requested):
            if candidate not in ordered:
                ordered.append(candidate)
    routes = [
        Route(provider=m.provider, model=m.id, upstream_model=m.upstream_id)
        for m in ordered
        if _configured(catalog, m.provider) and m.modality == first.modality
    ]
    if not routes:
        provider = catalog.providers.get(first.provider)
        name = provider.name if provider else first.provider
        raise GatewayError(
            "temporarily_unavailable",
            f"The model {model_id!r} is known, but its provider {name} is not configured on this gateway.",
            retry_after=60,
            param="model",
        )
    up = [r for r in routes if healthy(r.provider, r.model)]
    down = [r for r in routes if r not in up]
    return up + down


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
