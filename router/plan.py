"""A request's plan: the ordered candidates (provider pool, model) a request may be served by.

Pure: it reads the catalog, the providers' configuration and health, and returns a list. The first
candidate is tried first; a worker hands the job to the next one when a provider fails before the first
token reached the client.
"""

from __future__ import annotations

from collections.abc import Callable

from common.errors import GatewayError
from common.wire import Route
from router.catalog import Catalog, Model

Healthy = Callable[[str, str], bool]  # (provider, model id) -> circuit closed?


def _always_healthy(provider: str, model_id: str) -> bool:
    return True


def plan_for(
    catalog: Catalog,
    model_id: str,
    *,
    extra_models: list[str] | None = None,
    healthy: Healthy = _always_healthy,
    modality: str = "chat",
) -> list[Route]:
    """Candidates for ``model_id`` (then the client's ``models`` list), configured providers only.

    Healthy candidates come first; unhealthy ones stay at the end as a last resort rather than vanishing,
    so a request is never refused only because every circuit is open.
    """
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
