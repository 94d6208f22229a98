"""``GET /models``, ``/models/{id}``, ``/embedding-models``, ``/transcription-models`` and ``/providers``.

The lists are built from the catalog once per filter combination and kept as encoded bytes (plus a gzip
copy, made on first demand), so a repeated request costs a dictionary hit and a header check. Lists that
depend on provider health (``?available=true``, ``/providers``) are rebuilt when the gateway loads a new
health snapshot, never in between. Every list carries a weak ETag; ``If-None-Match`` gets a 304.

The same entries back ``megabrain models`` / ``megabrain providers`` (api/cli_catalog.py).
"""

from __future__ import annotations

import gzip
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.gateway import Gateway
from common.errors import GatewayError
from router.catalog import Catalog, Model
from router.health import HealthSnapshot
from router.providers import Provider

MODALITIES = ("chat", "embedding", "transcription")
GZIP_AT = 1024  # bytes; smaller bodies go out as they are
STATIC_CACHE_CONTROL = "public, max-age=300"  # the catalog changes only when the gateway restarts
LIVE_CACHE_CONTROL = "no-cache"  # health-dependent: clients revalidate (cheap, thanks to the ETag)

_encode = msgspec.json.Encoder().encode


# --- entries (shared with the CLI) ------------------------------------------------------------------------


def model_entry(model: Model) -> dict[str, Any]:
    """One model in OpenAI's list format plus what clients choose by: name, context, prices, kind, tier."""
    pricing: dict[str, str] = {"prompt": model.prompt_price, "completion": model.completion_price}
    if model.audio_hour_price is not None:
        pricing["audio_per_hour"] = model.audio_hour_price
    return {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.provider,
        "name": model.name,
        "provider": model.provider,
        "modality": model.modality,
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "pricing": pricing,
        "capabilities": sorted(model.capabilities),
        "free": model.free,
        "tier": model.tier,
        "deprecated": model.deprecated,
    }


def provider_entry(provider: Provider, catalog: Catalog, health: HealthSnapshot | None) -> dict[str, Any]:
    """A provider as clients may see it: ``Provider.public()`` (never a key or a base URL), its model
    count, and its current health when the caller has a snapshot (the CLI has none: health lives in Redis)."""
    entry = provider.public()
    entry["models"] = sum(1 for m in catalog.by_provider(provider.id) if m.listed)
    if health is not None:
        circuit = circuit_state(health, provider.id)
        entry["health"] = {
            "healthy": circuit != "open",
            "circuit": circuit,
            "error_rate": health.error_rates.get(provider.id),
            "latency": health.latencies.get(provider.id),
        }
    return entry


def circuit_state(health: HealthSnapshot, provider: str, model_id: str | None = None) -> str:
    """``open``, ``half_open`` or ``closed``, read without side effects: ``HealthSnapshot.healthy()``
    hands out a half-open circuit's single trial, which a listing must never consume."""
    scopes = (provider,) if model_id is None else (provider, f"{provider}|{model_id}")
    if any(scope in health.open_circuits for scope in scopes):
        return "open"
    half_open = getattr(health, "half_open", frozenset())
    return "half_open" if any(scope in half_open for scope in scopes) else "closed"


def select_models(
    catalog: Catalog,
    *,
    modality: str | None = "chat",
    provider: str | None = None,
    available: bool = False,
    free: bool | None = None,
    health: HealthSnapshot | None = None,
) -> list[Model]:
    """Listed models matching the filters. ``available``: the provider is configured (and its circuit, or
    the model's, not open when a health snapshot is given)."""
    chosen = []
    for model in catalog.listed(modality):
        if provider is not None and model.provider != provider:
            continue
        if free is not None and model.free != free:
            continue
        if available and not _available(catalog, model, health):
            continue
        chosen.append(model)
    return chosen


def _available(catalog: Catalog, model: Model, health: HealthSnapshot | None) -> bool:
    seller = catalog.providers.get(model.provider)
    if seller is None or not seller.configured:
        return False
    return health is None or circuit_state(health, model.provider, model.id) != "open"


# --- the encoded-bytes cache ------------------------------------------------------------------------------


@dataclass
class Encoded:
    body: bytes
    etag: str
    gzipped: bytes | None = None  # made on first demand

    @classmethod
    def of(cls, document: object) -> "Encoded":
        body = _encode(document)
        return cls(body=body, etag='W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')

    def gzip_body(self) -> bytes:
        if self.gzipped is None:
            self.gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
        return self.gzipped


class ListingCache:
    """Encoded lists of one catalog, keyed by the normalised query. Health-dependent entries remember the
    snapshot they were built from and are rebuilt when the gateway swaps in a new one."""

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], tuple[object | None, Encoded]] = {}

    def get(self, key: tuple[Any, ...], health: object | None, build: Callable[[], object]) -> Encoded:
        hit = self.entries.get(key)
        if hit is not None and hit[0] is health:
            return hit[1]
        encoded = Encoded.of(build())
        self.entries[key] = (health, encoded)
        return encoded


_caches: "weakref.WeakKeyDictionary[Catalog, ListingCache]" = weakref.WeakKeyDictionary()


def cache_for(catalog: Catalog) -> ListingCache:
    cache = _caches.get(catalog)
    if cache is None:
        cache = _caches[catalog] = ListingCache()
    return cache


def send(request: Request, encoded: Encoded, cache_control: str) -> Response:
    """200 with the body (gzipped when the client takes it), or 304 when the client's copy is current."""
    headers = {"etag": encoded.etag, "cache-control": cache_control, "vary": "accept-encoding"}
    if _matches(request.headers.get("if-none-match"), encoded.etag):
        return Response(status_code=304, headers=headers)
    body = encoded.body
    if len(body) >= GZIP_AT and "gzip" in request.headers.get("accept-encoding", "").lower():
        body = encoded.gzip_body()
        headers["content-encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


# --- query parsing ----------------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _flag(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise GatewayError("invalid_request", f"{name} must be true or false, not {raw!r}.", param=name)


def _provider_filter(request: Request, catalog: Catalog) -> str | None:
    provider = request.query_params.get("provider") or None
    if provider is not None and provider not in catalog.providers:
        raise GatewayError(
            "not_found", f"There is no provider {provider!r}. GET /providers lists them.", param="provider"
        )
    return provider


def _modality(request: Request, default: str) -> str | None:
    raw = request.query_params.get("modality") or default
    if raw == "all":
        return None
    if raw not in MODALITIES:
        raise GatewayError(
            "invalid_request", f"modality must be one of {', '.join(MODALITIES)} or all, not {raw!r}.",
            param="modality",
        )
    return raw


# --- handlers ---------------------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _list_response(request: Request, default_modality: str) -> Response:
    gateway = _gateway(request)
    catalog = gateway.catalog
    modality = _modality(request, default_modality)
    provider = _provider_filter(request, catalog)
    available = bool(_flag(request, "available"))
    free = _flag(request, "free")
    health = gateway.health if available else None

    def build() -> object:
        models = select_models(catalog, modality=modality, provider=provider, available=available, free=free,
                               health=health)
        return {"object": "list", "data": [model_entry(m) for m in models]}

    encoded = cache_for(catalog).get(("models", modality, provider, available, free), health, build)
    return send(request, encoded, LIVE_CACHE_CONTROL if available else STATIC_CACHE_CONTROL)


async def list_models(request: Request) -> Response:
    """Chat models by default (``?modality=embedding|transcription|all`` for the others)."""
    return _list_response(request, "chat")


async def list_embedding_models(request: Request) -> Response:
    return _list_response(request, "embedding")


async def list_transcription_models(request: Request) -> Response:
    return _list_response(request, "transcription")


async def get_model(request: Request) -> Response:
    """One listed model by id or alias; the entry names its canonical id."""
    catalog = _gateway(request).catalog
    model_id = request.path_params.get("model_id", "")
    model = catalog.get(model_id) if model_id else None
    if model is None or not model.listed:
        suggestions = catalog.suggest(model_id) if model_id else []
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        raise GatewayError("model_not_found", f"The model {model_id!r} is not listed here.{hint}", param="model")
    encoded = cache_for(catalog).get(("model", model.id), None, lambda: model_entry(model))
    return send(request, encoded, STATIC_CACHE_CONTROL)


async def list_providers(request: Request) -> Response:
    gateway = _gateway(request)
    catalog = gateway.catalog
    health = gateway.health

    def build() -> object:
        return {"object": "list", "data": [provider_entry(p, catalog, health) for p in catalog.providers.values()]}

    encoded = cache_for(catalog).get(("providers",), health, build)
    return send(request, encoded, LIVE_CACHE_CONTROL)


ROUTES = [
    ("GET", "/models", list_models),
    ("GET", "/models/{model_id:path}", get_model),
    ("GET", "/embedding-models", list_embedding_models),
    ("GET", "/transcription-models", list_transcription_models),
    ("GET", "/providers", list_providers),
]
