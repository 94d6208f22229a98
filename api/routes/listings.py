"""``GET /models``, ``/models/{id}``, ``/models/{id}/endpoints``, ``/embedding-models``,
``/transcription-models``, ``/image-models``, ``/speech-models``, ``/rerank-models`` and ``/providers``, in OpenAI's list format with OpenRouter's fields.

The lists are built from the catalog once per filter combination and kept as encoded bytes (plus a gzip
copy, made on first demand), so a repeated request costs a dictionary hit and a header check. Lists that
depend on provider health (``?available=true``, ``/providers``) are rebuilt when the gateway loads a new
health snapshot, never in between. Every list carries a weak ETag; ``If-None-Match`` gets a 304.

A client that sends ``anthropic-version`` (the Anthropic SDKs) gets ``/models`` and ``/models/{id}`` in
Anthropic's shape instead, paginated (``api/formats/anthropic_models.py``), and refusals in Anthropic's
error shape; a Gemini client (``x-goog-api-client``: both Google SDKs) gets them in Gemini's shape, as on
``/v1beta/models`` (``api/formats/gemini_models.py``), refusals in Google's. The same entries back
``megabrain models`` / ``megabrain providers`` (api/cli/catalog.py).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.formats.anthropic_messages import ANTHROPIC_MESSAGES
from api.formats.anthropic_models import ModelPages, model_info, wants_anthropic
from api.formats.gemini_generate import GEMINI_GENERATE
from api.formats.gemini_models import GeminiModels, wants_gemini
from api.gateway import Gateway
from common.errors import GatewayError
from router.catalog import AUTO_MODELS, Catalog, Model
from router.media import image_spec, rerank_spec, speech_spec
from router.health import HealthSnapshot
from router.preferences import hidden_free, price_of
from router.providers import Provider

MODALITIES = ("chat", "embedding", "transcription", "completion", "image", "speech", "moderation", "rerank")
GZIP_AT = 1024  # bytes; smaller bodies go out as they are
STATIC_CACHE_CONTROL = "public, max-age=300"  # the catalog changes only when the gateway restarts
LIVE_CACHE_CONTROL = "no-cache"  # health-dependent: clients revalidate (cheap, thanks to the ETag)

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


# --- entries (shared with the CLI) ------------------------------------------------------------------------


def pricing_of(model: Model) -> dict[str, str]:
    """USD per token as decimal strings; cache rates where the data knows them."""
    pricing: dict[str, str] = {"prompt": model.prompt_price, "completion": model.completion_price}
    if model.cache_read_price is not None:
        pricing["input_cache_read"] = model.cache_read_price
    if model.cache_write_price is not None:
        pricing["input_cache_write"] = model.cache_write_price
    if model.audio_hour_price is not None:
        pricing["audio_per_hour"] = model.audio_hour_price
    if model.image_input_price is not None:
        pricing["input_image"] = model.image_input_price
    if model.modality == "image" and model.completion_price == "0":  # priced per image (router/media.py)
        per_image = image_spec(model).price(None, None)
        if per_image is not None:
            pricing["image"] = format(per_image, "f")  # at the default quality and size
    if model.modality == "speech":
        pricing["character"] = format(speech_spec(model).per_character, "f")
    if model.modality == "rerank" and rerank_spec(model).per_search_unit is not None:
        pricing["search_unit"] = format(rerank_spec(model).per_search_unit, "f")
    return pricing


def model_entry(model: Model) -> dict[str, Any]:
    """One endpoint in OpenAI's list format, with OpenRouter's fields (``canonical_slug``,
    ``architecture``, ``top_provider``, ``supported_parameters``) and what clients choose by."""
    inputs, outputs = list(model.input_modalities), list(model.output_modalities)
    return {
        "id": model.id,
        "canonical_slug": model.slug,
        "object": "model",
        "created": model.created,
        "owned_by": model.provider,
        "name": model.name,
        "description": None,
        "provider": model.provider,
        "modality": model.modality,
        "architecture": {
            "modality": "+".join(inputs) + "->" + "+".join(outputs),
            "input_modalities": inputs,
            "output_modalities": outputs,
            "tokenizer": model.family,
        },
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "top_provider": {"context_length": model.context_length, "max_completion_tokens": model.max_output_tokens,
                         "is_moderated": False},
        "pricing": pricing_of(model),
        "supported_parameters": list(model.supported_parameters),
        "capabilities": sorted(model.capabilities),
        "quantization": model.quantization,
        "free": model.free,
        "tier": model.tier,
        "deprecated": model.deprecated,
    }


def canonical_entry(slug: str, endpoints: list[Model], catalog: Catalog) -> dict[str, Any]:
    """A canonical ``author/model`` id, described by the endpoint a request for it goes to first: the
    cheapest at a configured provider (``router/plan.py`` plans configured endpoints only, cheapest
    first), so its ``provider``, ``pricing`` and ``free`` are what a caller meets — never an unconfigured
    local server's zero price. Only when no configured provider serves the model (a request is then
    refused), the cheapest of all describes it. Limits: the widest among those same endpoints."""
    served = [m for m in endpoints if _configured(catalog, m)] or endpoints
    best = min(served, key=lambda m: (price_of(m), m.id))
    entry = model_entry(best)
    context = max((m.context_length or 0 for m in served), default=0) or None
    output = max((m.max_output_tokens or 0 for m in served), default=0) or None
    entry.update(id=slug, owned_by=slug.split("/", 1)[0], name=_display_name(best, slug), context_length=context,
                 max_output_tokens=output, endpoints=len(endpoints))
    entry["top_provider"] = {"context_length": best.context_length, "max_completion_tokens": best.max_output_tokens,
                             "is_moderated": False}
    return entry


def _display_name(model: Model, slug: str) -> str:
    return model.name if model.name and "/" not in model.name else slug.split("/", 1)[1]


AUTO_DESCRIPTIONS = {
    "auto": ("Auto (best available)", "frontier", "The best configured, healthy model that fits the request."),
    "auto-free": ("Auto (free models only)", "free", "Free models only; never a paid fallback."),
    "auto-balanced": ("Auto (balanced)", "balanced", "Cost-effective capable paid models."),
    "auto-frontier": ("Auto (frontier)", "frontier", "Frontier paid models only."),
}


def auto_entry(model_id: str) -> dict[str, Any]:
    """An auto id as a listing: it routes, so it has no price of its own (the chosen model's applies).
    Its ``pricing`` says so as OpenRouter lists its router (``openrouter/auto``: ``"-1"``), so a client that
    reads every entry's price finds one; ``auto-free`` only ever picks free models: ``"0"``."""
    price = "0" if model_id == "auto-free" else "-1"
    name, tier, description = AUTO_DESCRIPTIONS[model_id]
    return {
        "id": model_id, "canonical_slug": model_id, "object": "model", "created": 0, "owned_by": "megabrain",
        "name": name, "description": description, "provider": None, "modality": "chat",
        "architecture": {"modality": "text+image->text", "input_modalities": ["text", "image"],
                         "output_modalities": ["text"], "tokenizer": None},
        "context_length": None, "max_output_tokens": None, "top_provider": None,
        "pricing": {"prompt": price, "completion": price},
        "supported_parameters": [], "capabilities": [], "quantization": None,
        "free": model_id == "auto-free", "tier": tier, "deprecated": False,
    }


def endpoint_entry(model: Model, provider: Provider | None, health: HealthSnapshot | None) -> dict[str, Any]:
    """One endpoint of a model as OpenRouter's ``/models/{author}/{slug}/endpoints`` lists it, with its
    live health (last minute: ``uptime`` = share of answered calls, ``latency`` = mean ms)."""
    name = provider.name if provider else model.provider
    error_rate = health.error_rate(model.provider, model.id) if health is not None else None
    latency = health.latency(model.provider, model.id) if health is not None else None
    circuit = circuit_state(health, model.provider, model.id) if health is not None else "closed"
    return {
        "name": f"{name} | {model.upstream_id}",
        "id": model.id,
        "model_name": model.name,
        "provider_name": name,
        "tag": model.provider,
        "upstream_id": model.upstream_id,
        "configured": bool(provider and provider.configured),
        "context_length": model.context_length,
        "max_completion_tokens": model.max_output_tokens,
        "max_prompt_tokens": None,
        "pricing": pricing_of(model),
        "quantization": model.quantization,
        "supported_parameters": list(model.supported_parameters),
        "data_collection": provider.data_collection if provider else "unknown",
        "status": -1 if circuit == "open" else 0,
        "circuit": circuit,
        "uptime_last_30m": None if error_rate is None else round(100 * (1 - error_rate), 2),
        "latency_last_30m": None if latency is None else round(latency * 1000),
        "health_window_seconds": 60,
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


def list_entries(catalog: Catalog, models: list[Model], *, modality: str | None, provider: str | None,
                 free: bool | None) -> list[dict[str, Any]]:
    """The listing: each endpoint, then (unless filtered by provider) each canonical id of those endpoints
    that is not an endpoint id itself (in any case: ``minimax/minimax-m2`` is ``minimax/MiniMax-M2``), then
    the auto ids. A canonical id is described by all its endpoints (``canonical_entry``) and kept when that
    description passes the ``free`` filter."""
    entries = [model_entry(m) for m in models]
    if provider is not None:
        return entries
    endpoint_ids = _lowercase_ids(catalog)
    slugs = dict.fromkeys(m.canonical for m in models if m.canonical and not hidden_free(m)
                          and m.canonical.lower() not in endpoint_ids)
    for slug in slugs:
        entry = canonical_entry(slug, served_group(catalog, slug), catalog)
        if free is None or entry["free"] == free:
            entries.append(entry)
    if modality in (None, "chat"):
        entries += [auto_entry(a) for a in AUTO_MODELS if free is None or free == (a == "auto-free")]
    return entries


def served_group(catalog: Catalog, slug: str) -> list[Model]:
    """A canonical id's listed endpoints, without OpenRouter-style ``:free`` copies (they serve only the
    ``:free`` variant, ``router/preferences.py``)."""
    return [m for m in catalog.endpoints_of(slug) if m.listed and not hidden_free(m)]


_LOWER_IDS: "weakref.WeakKeyDictionary[Catalog, frozenset[str]]" = weakref.WeakKeyDictionary()


def _lowercase_ids(catalog: Catalog) -> frozenset[str]:
    ids = _LOWER_IDS.get(catalog)
    if ids is None:
        ids = _LOWER_IDS[catalog] = frozenset(model_id.lower() for model_id in catalog.models)
    return ids


def _configured(catalog: Catalog, model: Model) -> bool:
    seller = catalog.providers.get(model.provider)
    return seller is not None and seller.configured


def _available(catalog: Catalog, model: Model, health: HealthSnapshot | None) -> bool:
    if not _configured(catalog, model):
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
        self.entries: dict[tuple[Any, ...], tuple[object | None, Any]] = {}

    def get(self, key: tuple[Any, ...], health: object | None, build: Callable[[], object]) -> Encoded:
        return self.get_object(("encoded", *key), health, lambda: Encoded.of(build()))

    def get_object(self, key: tuple[Any, ...], health: object | None, build: Callable[[], T]) -> T:
        """Whatever ``build`` makes, kept like the encoded lists (the Anthropic-shaped pages, an entry)."""
        hit = self.entries.get(key)
        if hit is not None and hit[0] is health:
            return hit[1]  # type: ignore[return-value]
        made = build()
        self.entries[key] = (health, made)
        return made


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
    key = (modality, provider, available, free)

    def entries() -> list[dict[str, Any]]:
        models = select_models(catalog, modality=modality, provider=provider, available=available, free=free,
                               health=health)
        return list_entries(catalog, models, modality=modality, provider=provider, free=free)

    if wants_anthropic(request.headers):
        pages = cache_for(catalog).get_object(("anthropic", *key), health, lambda: ModelPages(entries()))
        return Response(_encode(pages.page(request.query_params)), media_type="application/json")
    encoded = cache_for(catalog).get(("models", *key), health, lambda: {"object": "list", "data": entries()})
    return send(request, encoded, LIVE_CACHE_CONTROL if available else STATIC_CACHE_CONTROL)


def anthropic_shaped(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A listing asked for by an Anthropic client gets its refusals in Anthropic's error shape."""

    @functools.wraps(handler)
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as error:
            if not wants_anthropic(request.headers):
                raise
            return Response(ANTHROPIC_MESSAGES.error_body(error.status, error.body()), status_code=error.status,
                            media_type="application/json")

    return handle


@anthropic_shaped
async def list_models(request: Request) -> Response:
    """Chat models by default (``?modality=embedding|transcription|all`` for the others)."""
    if wants_gemini(request.headers):
        return gemini_list(request)
    return _list_response(request, "chat")


async def list_embedding_models(request: Request) -> Response:
    return _list_response(request, "embedding")


async def list_transcription_models(request: Request) -> Response:
    return _list_response(request, "transcription")


async def list_image_models(request: Request) -> Response:
    return _list_response(request, "image")


async def list_speech_models(request: Request) -> Response:
    return _list_response(request, "speech")


async def list_rerank_models(request: Request) -> Response:
    return _list_response(request, "rerank")


def _not_listed(catalog: Catalog, model_id: str) -> GatewayError:
    suggestions = catalog.suggest(model_id) if model_id else []
    hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    return GatewayError("model_not_found", f"The model {model_id!r} is not listed here.{hint}", param="model")


@anthropic_shaped
async def get_model(request: Request) -> Response:
    """One listed model by endpoint id, canonical id, alias or auto id (as Anthropic's ``ModelInfo`` for
    an Anthropic client)."""
    catalog = _gateway(request).catalog
    model_id = request.path_params.get("model_id", "")
    if wants_gemini(request.headers):
        return gemini_get(request, model_id)
    key, build = _one_model(catalog, model_id)
    if wants_anthropic(request.headers):
        return Response(_encode(model_info(cache_for(catalog).get_object(key, None, build))),
                        media_type="application/json")
    return send(request, cache_for(catalog).get(key, None, build), STATIC_CACHE_CONTROL)


def _one_model(catalog: Catalog, model_id: str) -> tuple[tuple[str, str], Callable[[], dict[str, Any]]]:
    """The cache key and builder of one model's entry, or the 404."""
    if model_id in AUTO_MODELS:
        return ("model", model_id), lambda: auto_entry(model_id)
    model = catalog.models.get(model_id)
    slug = catalog.canonical(model_id) if model is None else None
    if slug is not None:
        group = served_group(catalog, slug)
        if group:
            return ("canonical", slug), lambda: canonical_entry(slug, group, catalog)
    model = model or (catalog.get(model_id) if model_id else None)
    if model is None or not model.listed:
        raise _not_listed(catalog, model_id)
    found = model
    return ("model", found.id), lambda: model_entry(found)


def gemini_models(catalog: Catalog) -> GeminiModels:
    """The chat models of configured providers, in ``?available=true`` order, as Gemini lists models
    (built once per catalog; a page is a slice of it)."""

    def build() -> GeminiModels:
        models = select_models(catalog, modality="chat", available=True)
        return GeminiModels(list_entries(catalog, models, modality="chat", provider=None, free=None))

    return cache_for(catalog).get_object(("gemini",), None, build)


def _gemini_json(body: object, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _gemini_refusal(error: GatewayError) -> Response:
    return _gemini_json(msgspec.json.decode(GEMINI_GENERATE.error_body(error.status, error.body())), error.status)


def gemini_list(request: Request) -> Response:
    try:
        return _gemini_json(gemini_models(_gateway(request).catalog).page(request.query_params))
    except GatewayError as error:
        return _gemini_refusal(error)


def gemini_get(request: Request, model_id: str) -> Response:
    """One model by any id a request takes (an alias is named as asked, described as what it serves)."""
    catalog = _gateway(request).catalog
    model = catalog.get(model_id) if model_id else None
    served = catalog.canonical(model_id) or (model.id if model is not None and model.listed else None)
    entry = gemini_models(catalog).get(model_id, served)
    if entry is None and model is not None:
        entry = gemini_models(catalog).get(model_id, model.slug)
    if entry is None:
        return _gemini_refusal(GatewayError(
            "model_not_found", f"models/{model_id} is not found: GET /v1beta/models lists the models this gateway "
                               "serves.", param="model"))
    return _gemini_json(entry)


async def list_endpoints(request: Request) -> Response:
    """``GET /models/{author}/{slug}/endpoints``: every endpoint of a model, cheapest first, with price,
    limits and live health. An endpoint id lists its canonical model's endpoints."""
    gateway = _gateway(request)
    catalog = gateway.catalog
    model_id = request.path_params.get("model_id", "")
    slug = catalog.canonical(model_id)
    if slug is None:
        model = catalog.get(model_id)
        if model is None or not model.listed:
            raise _not_listed(catalog, model_id)
        slug = model.slug
    group = sorted(catalog.endpoints_of(slug), key=lambda m: (price_of(m), m.id))
    health = gateway.health

    def build() -> object:
        head = canonical_entry(slug, [m for m in group if not hidden_free(m)] or group, catalog)
        head["endpoints"] = [endpoint_entry(m, catalog.providers.get(m.provider), health) for m in group]
        return {"data": head}

    encoded = cache_for(catalog).get(("endpoints", slug), health, build)
    return send(request, encoded, LIVE_CACHE_CONTROL)


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
    ("GET", "/models/{model_id:path}/endpoints", list_endpoints),
    ("GET", "/models/{model_id:path}", get_model),
    ("GET", "/embedding-models", list_embedding_models),
    ("GET", "/transcription-models", list_transcription_models),
    ("GET", "/image-models", list_image_models),
    ("GET", "/speech-models", list_speech_models),
    ("GET", "/rerank-models", list_rerank_models),
    ("GET", "/providers", list_providers),
]
