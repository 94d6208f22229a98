"""The ``auto`` model ids: pick the models that should serve a request, best first.

Pure: reads the catalog, the providers' configuration and a health callback; returns models. The first
model becomes the plan's first candidate, the next ones its fallbacks.

- ``auto``           best available: frontier, then balanced, then free models.
- ``auto-free``      free models only — never a paid one.
- ``auto-balanced``  paid models, cost-effective first (balanced tier, tool-capable, cheapest).
- ``auto-frontier``  frontier paid models only — never a free one.

Health callback: ``health(provider_id, model_id) -> float | None`` is a *badness score* in [0, 1]:
0 is perfect, 1 is down (an open circuit). The health module may report a plain error rate or blend in
latency; ``None`` means no data and counts as healthy. A score of ``UNHEALTHY_AT`` or more excludes the
model; smaller scores only rank it lower (in coarse bands, so noise does not reorder by price).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, NoReturn

import msgspec

from common.errors import GatewayError
from router.catalog import AUTO_MODELS, Catalog, Model

Health = Callable[[str, str], float | None]

UNHEALTHY_AT = 0.5
HEALTH_BANDS = (0.05, 0.2)  # scores below the first band count as healthy, then "degraded", then "poor"
OUTPUT_MARGIN = 1024  # tokens left for the answer when checking a prompt against a context window
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # tokens per message for role and separators
IMAGE_TOKENS = 1000  # a fixed guess per image (OpenAI: ~85–1100 depending on detail and size)
MEDIA_TOKENS = 1000  # audio and file parts, also a fixed guess

_TIER_ORDER = {
    "auto": ("frontier", "balanced", "free"),
    "auto-free": ("free",),
    "auto-balanced": ("balanced", "frontier"),
    "auto-frontier": ("frontier",),
}


def choose(
    catalog: Catalog,
    kind: str,
    *,
    needs_tools: bool,
    needs_vision: bool,
    prompt_tokens: int,
    health: Health | None = None,
    output_tokens: int | None = None,
) -> list[Model]:
    """Ordered candidates for an auto id; empty when nothing fits (the caller answers 503)."""
    if kind not in _TIER_ORDER:
        raise ValueError(f"{kind!r} is not one of {AUTO_MODELS}")
    needed = prompt_tokens + (output_tokens if output_tokens is not None else OUTPUT_MARGIN)
    ranked: list[tuple[int, int, Model]] = []
    for tier, model in _candidates(catalog, kind):
        if not _fits(model, needed, needs_tools, needs_vision):
            continue
        score = health(model.provider, model.id) if health is not None else None
        if score is not None and score >= UNHEALTHY_AT:
            continue
        ranked.append((tier, _health_band(score), model))
    ranked.sort(key=lambda entry: (entry[0], entry[1]))  # stable: the static order holds within a band
    result: list[Model] = []
    for tier in range(len(_TIER_ORDER[kind])):  # spread providers within a tier, never across tiers
        result += _spread_providers([model for t, _, model in ranked if t == tier])
    return result


# The part of the choice that depends only on the catalog (which models may serve a kind, in which order
# before health is known) is worked out once per catalog and kind, so a request walks a short sorted list
# instead of ranking thousands of models.
_STATIC: "weakref.WeakKeyDictionary[Catalog, dict[str, list[tuple[int, Model]]]]" = weakref.WeakKeyDictionary()


def _candidates(catalog: Catalog, kind: str) -> list[tuple[int, Model]]:
    per_kind = _STATIC.get(catalog)
    if per_kind is None:
        per_kind = _STATIC[catalog] = {}
    found = per_kind.get(kind)
    if found is None:
        tiers = _TIER_ORDER[kind]
        keyed = [(_rank(model, kind, tiers, None), model) for model in catalog.models.values()
                 if _eligible(catalog, model, tiers)]
        keyed.sort(key=lambda pair: pair[0])
        found = per_kind[kind] = [(key[0], model) for key, model in keyed]
    return found


def _eligible(catalog: Catalog, model: Model, tiers: tuple[str, ...]) -> bool:
    if not (model.listed and model.auto and model.modality == "chat") or model.deprecated:
        return False
    # free/paid is decided by the free flag, not the tier label alone, so a mislabelled model cannot
    # turn auto-free into a paid request or auto-frontier into a free one.
    if tiers == ("free",):
        if not model.free:
            return False
    elif "free" not in tiers and model.free:
        return False
    if model.tier not in tiers and not (model.free and "free" in tiers):
        return False
    provider = catalog.providers.get(model.provider)
    return provider is not None and provider.configured


def _fits(model: Model, needed: int, needs_tools: bool, needs_vision: bool) -> bool:
    if model.context_length is not None and model.context_length < needed:
        return False
    if needs_tools and "tools" not in model.capabilities:
        return False
    return not (needs_vision and "vision" not in model.capabilities)


def _rank(model: Model, kind: str, tiers: tuple[str, ...], score: float | None) -> tuple[Any, ...]:
    """Tier, health band, tool-capable (a proxy for a capable modern model), priced from the seller's own
    list, known context window, blended price (3 prompt : 1 completion), then the id for determinism."""
    tier = tiers.index("free" if model.free else model.tier) if (model.free or model.tier in tiers) else len(tiers)
    band = _health_band(score)
    capable = 0 if "tools" in model.capabilities else 1
    estimated = 1 if model.pricing_source.startswith("estimate:") else 0
    unknown_context = 1 if model.context_length is None else 0
    return (tier, band, capable, estimated, unknown_context, _blended_price(model), model.id)


def _health_band(score: float | None) -> int:
    if score is None:
        return 0
    return sum(1 for edge in HEALTH_BANDS if score >= edge)


def _blended_price(model: Model) -> Decimal:
    try:
        return Decimal(model.prompt_price) * 3 + Decimal(model.completion_price)
    except ArithmeticError:  # a malformed price from the config file ranks last rather than crashing
        return Decimal("Infinity")


def _spread_providers(models: list[Model]) -> list[Model]:
    """Each provider's best model first (in rank order), then the rest: the first fallbacks should not all
    sit behind the same failing provider."""
    seen: set[str] = set()
    firsts: list[Model] = []
    rest: list[Model] = []
    for model in models:
        (rest if model.provider in seen else firsts).append(model)
        seen.add(model.provider)
    return firsts + rest


def no_model_available(
    kind: str, *, needs_tools: bool = False, needs_vision: bool = False, prompt_tokens: int = 0,
    retry_after: float = 30.0,
) -> NoReturn:
    """Raise the 503 for an auto id that has no candidate, saying what was asked for and how to fix it."""
    what = {"auto-free": "free ", "auto-balanced": "paid ", "auto-frontier": "frontier "}.get(kind, "")
    needs = [f"a ~{prompt_tokens:,}-token prompt"]
    if needs_tools:
        needs.append("tool calling")
    if needs_vision:
        needs.append("image input")
    hint = (
        "Configure a provider that serves free models (for example OPENROUTER_API_KEY for OpenRouter's "
        "':free' models), list one in MEGABRAIN_FREE_MODELS, or declare one with free = true in the config file"
        if kind == "auto-free"
        else "Configure another provider's API key"
    )
    raise GatewayError(
        "temporarily_unavailable",
        f"No model available for {kind}: no configured, healthy {what}model supports "
        f"{', '.join(needs)}. {hint}, or retry later.",
        retry_after=retry_after,
        param="model",
    )


def estimate_prompt_tokens(messages: Iterable[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """A cheap upper-ish guess of prompt tokens: characters / 4, a few tokens per message, a fixed amount
    per image or media part. Good enough to skip models whose context window is clearly too small."""
    chars = 0
    fixed = 3
    for message in messages:
        fixed += MESSAGE_OVERHEAD
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                kind = part.get("type")
                if kind in ("image_url", "image"):
                    fixed += IMAGE_TOKENS
                elif kind in ("input_audio", "file", "audio"):
                    fixed += MEDIA_TOKENS
                else:
                    chars += len(str(part.get("text") or ""))
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    if tools:
        chars += len(msgspec.json.encode(tools))
    return fixed + (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def wants_vision(messages: Iterable[dict[str, Any]]) -> bool:
    """Whether any message carries an image part."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") in ("image_url", "image") for part in content
        ):
            return True
    return False
