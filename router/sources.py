"""Where the catalog's listings come from: the ``genai-prices`` snapshot, mapped onto our providers.

``SOURCES`` says, per registry provider, which price feed lists its models and how their ids are spelled
there; the functions below turn those entries into ``Model`` listings with prices (USD per token, exact
decimals), tier, modality and capabilities. Everything here runs once, at start-up.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from router import media
from router.model import Model
from router.providers import Provider


# --- prices and tiers ------------------------------------------------------------------------------------

# Tier rule (documented for operators): a paid model is "frontier" when its prompt price is at least
# $2.50 per million tokens or its completion price at least $10 per million — the price band the flagship
# models of every major vendor sit in. Everything else that is paid is "balanced"; price 0/0 is "free".
FRONTIER_PROMPT = Decimal("2.5").scaleb(-6)
FRONTIER_COMPLETION = Decimal("10").scaleb(-6)


def decimal_str(value: Decimal) -> str:
    """``Decimal`` → plain decimal string: no exponent, no trailing zeros (``"0.000003"``, ``"0"``)."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def tier_for(prompt: Decimal, completion: Decimal, free: bool) -> str:
    if free:
        return "free"
    if prompt >= FRONTIER_PROMPT or completion >= FRONTIER_COMPLETION:
        return "frontier"
    return "balanced"


# --- what the model id tells us ---------------------------------------------------------------------------

# Kinds the gateway has no endpoint for (speech synthesis, image generation, realtime/live sessions,
# moderation, OCR, reranking, …) and id patterns in the price data that are not callable ids.
_NOT_ROUTABLE = re.compile(
    r"tts|image|realtime|(^|[-/._])live([-._]|$)|moderation|ocr|rerank|dall-e|computer-use|sonic|orpheus"
    r"|deep-research|prompt-guard|robotics|^ft:|\.ft-|:extended|[-.]$"
    # completion models OpenAI retired in 2024 (babbage-002 and davinci-002 replaced them)
    r"|(^|/)(text-(ada|babbage|curie|davinci)|ada|curie)(-|$)|(^|/)(babbage|davinci)$"
)
# Chat-shaped but not general assistants (safety classifiers): listed, but auto-* never picks them.
_NOT_GENERAL = re.compile(r"guard|safety|safeguard|moderation")
_EMBEDDING = re.compile(r"embed|(^|/)bge-|^voyage-")
_TRANSCRIPTION = re.compile(r"whisper|transcribe")
# Image generation models (``POST /images/generations``; what each takes: router/media.py).
_IMAGE = re.compile(r"(^|/)(gpt-image-|dall-e-|chatgpt-image|gemini-[\w.-]*-image)")
# Legacy completion-only models: no chat endpoint, served by ``POST /completions``.
_COMPLETION = re.compile(r"(^|/)(babbage|davinci)-002$|gpt-3\.5-turbo-instruct")
# Capabilities are claimed only for families known to have them; unknown means "not claimed".
_VISION = re.compile(
    r"vision|[-/]vl([-.]|$)|pixtral|gpt-4o|gpt-4\.1|gpt-4-turbo|gpt-5|(^|[/.])o[34](-mini)?($|-)"
    r"|claude-(3|opus|sonnet|haiku|fable|mythos)|gemini|gemma-3|llama-4|grok-4"
)
_TOOLS = re.compile(
    r"gpt-4|gpt-5|gpt-oss|(^|[/.])o[134](-mini)?($|-)|claude-(3|opus|sonnet|haiku|fable|mythos)"
    r"|gemini-(1\.5|[2-9])|mistral-(large|medium|small)|ministral|codestral|devstral|magistral|grok-[2-9]"
    r"|deepseek-(chat|v3|v4)|qwen-?[23]|qwen3|kimi-k|glm-4\.[5-9]|glm-5|llama-3\.[1-3]|llama-4"
    r"|command-(r|a)|minimax-m|nemotron"
)
_JSON = re.compile(
    r"gpt-4o|gpt-4\.1|gpt-5|(^|[/.])o[34](-mini)?($|-)|gemini|mistral-(large|medium|small)|grok|deepseek-(chat|v3|v4)"
)


def modality_of(model_id: str) -> str:
    lowered = model_id.lower()
    if _TRANSCRIPTION.search(lowered):
        return "transcription"
    if _COMPLETION.search(lowered):
        return "completion"
    if _IMAGE.search(lowered):
        return "image"
    if _EMBEDDING.search(lowered):
        return "embedding"
    return "chat"


def capabilities_of(model_id: str, modality: str) -> frozenset[str]:
    if modality != "chat":
        return frozenset()
    lowered = model_id.lower()
    found = set()
    if _TOOLS.search(lowered):
        found.add("tools")
    if _VISION.search(lowered):
        found.add("vision")
    if _JSON.search(lowered):
        found.add("json")
    return frozenset(found)


# --- the genai-prices snapshot, flattened once ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One model of one genai-prices provider, with prices per token already resolved for today."""

    feed: str  # genai-prices provider id
    id: str
    name: str | None
    context_length: int | None
    deprecated: bool
    prompt: Decimal | None  # USD per token
    completion: Decimal | None
    audio_hour: Decimal | None  # USD per hour of audio
    cache_read: Decimal | None = None  # USD per cached input token read
    cache_write: Decimal | None = None  # USD per input token written to the cache (5-minute rate)
    image_input: Decimal | None = None  # USD per input image token (image models' edits)
    image_output: Decimal | None = None  # USD per output image token, where it differs from text output


def _flat(price: object) -> Decimal | None:
    """A per-million price → per token. Tiered prices count at their base rate (the small-prompt rate)."""
    if price is None:
        return None
    base = getattr(price, "base", price)
    return Decimal(base).scaleb(-6) if isinstance(base, Decimal | int) else None


@functools.lru_cache(maxsize=1)
def price_feeds() -> dict[str, tuple[PriceEntry, ...]]:
    """genai-prices' snapshot by their provider id. Cached: the import and walk cost ~0.2 s once."""
    try:
        from genai_prices import data
    except ImportError:  # the catalog still works from the config file and DEFAULT_MODELS
        return {}
    now = datetime.now(timezone.utc)
    feeds: dict[str, tuple[PriceEntry, ...]] = {}
    for provider in data.providers:
        entries = []
        for info in provider.models:
            prices = info.get_prices(now)
            hours = getattr(prices, "input_audio_hours", None) or getattr(prices, "audio_hours", None)
            entries.append(PriceEntry(
                feed=provider.id, id=info.id, name=info.name, context_length=info.context_window,
                deprecated=bool(info.deprecated),
                prompt=_flat(getattr(prices, "input_mtok", None)),
                completion=_flat(getattr(prices, "output_mtok", None)),
                audio_hour=Decimal(hours) if isinstance(hours, Decimal | int) else None,
                cache_read=_flat(getattr(prices, "cache_read_mtok", None)),
                cache_write=_flat(getattr(prices, "cache_write_mtok", None)),
                image_input=_flat(getattr(prices, "input_image_mtok", None)),
                image_output=_flat(getattr(prices, "output_image_mtok", None)),
            ))
        feeds[provider.id] = tuple(entries)
    return feeds


@functools.lru_cache(maxsize=1)
def hf_merged() -> dict[str, PriceEntry]:
    """Hugging Face Inference Providers: every repo id once, at its cheapest routed seller.

    genai-prices lists HF-routed prices per sub-provider (``huggingface_<seller>``); HF bills the
    seller's own rate. The chosen seller is remembered in ``feed`` so the router can pin it.
    """
    best: dict[str, PriceEntry] = {}
    for feed in sorted(f for f in price_feeds() if f.startswith("huggingface_")):
        for entry in price_feeds()[feed]:
            if entry.prompt is None:
                continue
            current = best.get(entry.id)
            if current is None or _blended(entry) < _blended(current):
                best[entry.id] = entry
    return best


def _blended(entry: PriceEntry) -> Decimal:
    return (entry.prompt or Decimal(0)) * 3 + (entry.completion or Decimal(0))


# --- which registry provider lists what -------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one registry provider's listing comes from. Applied only when that provider is registered.

    feed: a genai-prices provider id; ``hf`` (HF router, merged, seller pinned); ``hf-weights`` (the
    open-weight repos HF routes, for hosts that take HF repo ids); ``openrouter:<vendor>`` (OpenRouter's
    models under that vendor prefix, for the vendor's own API).
    ids: how the provider's API spells a model — same | fireworks | strip-org | after-vendor | lower-repo
    (the repo name without org, lowercased) | prefix:<text> (the vendor id with a prefix).
    estimate: the prices are another seller's price for the same model, not this provider's own.
    local: a server on the operator's machine — no per-token price, and never picked by auto-*.
    """

    provider: str
    feed: str
    keep: str = ""  # regex on the lowercased source id; only matches are listed
    drop: str = ""  # regex on the lowercased source id; matches are not listed
    ids: str = "same"
    estimate: bool = False
    local: bool = False


# Major open-weight publishers whose repos hosts serving HF repo ids commonly carry.
_OPEN_WEIGHT_ORGS = r"^(meta-llama|qwen|deepseek-ai|mistralai|google|openai|moonshotai|zai-org|minimaxai)/"
# The vendors whose models OpenRouter-style routers carry under "vendor/model" ids.
_ROUTED_VENDORS = r"^(openai|anthropic|google|x-ai|mistralai|deepseek|meta-llama|qwen|moonshotai|z-ai)/"

SOURCES: tuple[Source, ...] = (
    # The sellers' own price lists in genai-prices.
    # OpenAI: drop families served only by the Responses API (-pro, codex, search-api), not chat completions.
    Source("openai", "openai", drop=r"(^|-)pro$|codex|search-api|^gpt-3\.5-0301$"),
    Source("anthropic", "anthropic"),
    # genai-prices' "google" mixes Gemini API and Vertex (Claude on Vertex); the Gemini API serves these:
    Source("google", "google", keep=r"^(gemini|gemma)"),
    Source("vertex", "google"),
    Source("groq", "groq"),
    Source("mistral", "mistral", drop=r"^zai-|^deepseek-"),
    Source("codestral", "mistral", keep=r"^codestral"),
    Source("together", "together"),
    Source("fireworks", "fireworks", ids="fireworks"),
    Source("deepseek", "deepseek"),
    Source("xai", "x-ai"),
    Source("perplexity", "perplexity"),
    # OpenRouter: only "vendor/model" ids are callable there (the feed also holds bare matching aliases).
    Source("openrouter", "openrouter", keep=r"/", drop=r"^~|:batch$"),
    Source("cerebras", "cerebras"),
    Source("cohere", "cohere"),
    Source("baseten", "baseten"),
    Source("cloudflare", "cloudflare"),
    Source("databricks", "databricks"),
    Source("ovhcloud", "ovhcloud"),
    Source("novita", "novita"),
    Source("moonshot", "moonshotai"),
    Source("zai", "zai"),
    Source("zhipu", "zhipuai"),
    Source("meta", "meta"),
    Source("llama", "meta"),
    Source("minimax", "minimax"),
    Source("arcee", "arcee"),
    Source("avian", "avian"),
    Source("doubleword", "doubleword"),
    Source("modal", "modal"),
    Source("voyage", "voyageai"),
    Source("bedrock", "aws"),
    Source("azure", "azure", drop=r":free$"),
    # HF router: each repo once, pinned to its cheapest seller (upstream "repo:seller").
    Source("huggingface", "hf"),
    # Sellers genai-prices knows only through HF routing (HF passes the seller's rate through).
    Source("nebius", "huggingface_nebius"),
    Source("hyperbolic", "huggingface_hyperbolic"),
    Source("nscale", "huggingface_nscale"),
    Source("publicai", "huggingface_publicai"),
    Source("sambanova", "huggingface_sambanova", ids="strip-org"),  # SambaCloud ids drop the HF org
    # Vendors' own APIs, listed from OpenRouter's entries under the vendor's prefix. OpenRouter lists a
    # vendor's models at the vendor's price; slugs may differ slightly from the vendor's spelling (an
    # operator fixes one with a [[models]] override).
    Source("ai21", "openrouter:ai21", ids="after-vendor", estimate=True),
    Source("stepfun", "openrouter:stepfun", ids="after-vendor", estimate=True),
    Source("xiaomi", "openrouter:xiaomi", ids="after-vendor", estimate=True),
    Source("inception", "openrouter:inception", ids="after-vendor", estimate=True),
    Source("upstage", "openrouter:upstage", ids="after-vendor", estimate=True),
    Source("alibaba", "openrouter:qwen", ids="after-vendor", estimate=True),
    Source("dashscope", "openrouter:qwen", ids="after-vendor", estimate=True),
    Source("qwen", "openrouter:qwen", ids="after-vendor", estimate=True),
    Source("volcengine", "openrouter:bytedance-seed", ids="after-vendor", estimate=True),
    Source("byteplus", "openrouter:bytedance-seed", ids="after-vendor", estimate=True),
    Source("tencent", "openrouter:tencent", ids="after-vendor", estimate=True),
    Source("baidu", "openrouter:baidu", ids="after-vendor", estimate=True),
    Source("liquid", "openrouter:liquid", ids="after-vendor", estimate=True),
    Source("reka", "openrouter:rekaai", ids="after-vendor", estimate=True),
    Source("inflection", "openrouter:inflection", ids="after-vendor", estimate=True),
    Source("morph", "openrouter:morph", ids="after-vendor", estimate=True),
    Source("relace", "openrouter:relace", ids="after-vendor", estimate=True),
    Source("nousresearch", "openrouter:nousresearch", ids="after-vendor", estimate=True),
    # NVIDIA's API catalog spells ids "nvidia/<model>", as OpenRouter does.
    Source("nvidia", "openrouter:nvidia", estimate=True),
    # GitHub Models spells OpenAI's models "openai/<model>", as OpenRouter does.
    Source("github", "openrouter:openai", estimate=True),
    # Hosts that take HF repo ids for the open-weight models they run. Which repos each one carries
    # changes weekly; we list the major publishers' repos HF routes, at the cheapest HF-routed price
    # (an estimate). A repo a host lacks fails upstream and the plan falls back.
    Source("deepinfra", "hf-weights", estimate=True),
    Source("siliconflow", "hf-weights", estimate=True),
    Source("chutes", "hf-weights", estimate=True),
    Source("featherless", "hf-weights", estimate=True),
    Source("kluster", "hf-weights", estimate=True),
    Source("parasail", "hf-weights", estimate=True),
    Source("friendli", "hf-weights", estimate=True),
    Source("modelscope", "hf-weights", estimate=True),  # ModelScope mirrors these repos under the same ids
    Source("wandb", "hf-weights", estimate=True),
    # Hosts that spell open-weight models as the lowercased repo name ("llama-3.3-70b-instruct").
    Source("scaleway", "hf-weights", ids="lower-repo", estimate=True),
    Source("vultr", "hf-weights", ids="lower-repo", estimate=True),
    Source("lambda", "hf-weights", ids="lower-repo", estimate=True),
    # Clouds reselling vendor models under their own spelling, at the vendor's list price.
    Source("digitalocean", "openai", keep=r"^(gpt-4o|gpt-4\.1|gpt-5|o[134])", drop=r"(^|-)pro$|codex|search|audio",
           ids="prefix:openai-", estimate=True),
    Source("snowflake", "anthropic", keep=r"^claude-(3-5|3-7|4|sonnet|opus|haiku)", estimate=True),
    Source("snowflake", "openai", keep=r"^(gpt-4\.1|gpt-5)", drop=r"(^|-)pro$|codex|search|audio",
           ids="prefix:openai-", estimate=True),
    # Routers with OpenRouter-style "vendor/model" ids that bill provider list prices. ":batch" entries are
    # OpenRouter's batch-API prices (half the list price, answers within hours): no real-time endpoint
    # serves them, and listed they would plan first as the cheapest seller of the model.
    Source("requesty", "openrouter", keep=_ROUTED_VENDORS, drop=r":free$|:batch$", estimate=True),
    Source("helicone", "openrouter", keep=_ROUTED_VENDORS, drop=r":free$|:batch$", estimate=True),
    Source("vercel", "openrouter", keep=_ROUTED_VENDORS, drop=r":free$|:batch$", estimate=True),
    # Poe names the vendors' official bots by the model slug in title case ("Claude-Sonnet-4.5",
    # "GPT-5.4", "Grok-4", per creator.poe.com); derived from OpenRouter's slugs, priced at OpenRouter's.
    Source("poe", "openrouter", keep=r"^(openai/gpt|anthropic/claude|google/gemini|x-ai/grok)", drop=r":",
           ids="poe", estimate=True),
    # Local servers. vLLM names a served model by its HF repo id and LM Studio by the lowercased repo id,
    # so these are the ids the operator gets for those repos; which one is loaded we cannot know, so
    # auto-* skips them. Ollama, llama.cpp and Jan use their own names: declare those in the config file.
    Source("vllm", "hf-weights", local=True),
    Source("lmstudio", "hf-weights", ids="lower-id", local=True),
)

# modality -> the registry capability a provider needs to list models of it (router/providers.py)
MODALITY_CAPABILITY = {"chat": "chat", "embedding": "embeddings", "transcription": "transcription",
                       "completion": "completions", "image": "images", "speech": "speech",
                       "moderation": "moderations", "rerank": "rerank"}


def _entries_for(source: Source) -> list[PriceEntry]:
    feeds = price_feeds()
    if source.feed == "hf":
        return list(hf_merged().values())
    if source.feed == "hf-weights":
        return [e for e in hf_merged().values() if re.match(_OPEN_WEIGHT_ORGS, e.id.lower())]
    if source.feed.startswith("openrouter:"):
        vendor = source.feed.split(":", 1)[1] + "/"
        return [e for e in feeds.get("openrouter", ())
                if e.id.startswith(vendor) and not e.id.endswith((":free", ":batch"))]
    return list(feeds.get(source.feed, ()))


def _spell(source: Source, entry: PriceEntry) -> tuple[str, str]:
    """(catalog tail, upstream id) for one entry at one provider."""
    if source.feed == "hf":
        return entry.id, f"{entry.id}:{entry.feed.removeprefix('huggingface_')}"
    if source.ids == "fireworks" and "/" not in entry.id:
        return entry.id, f"accounts/fireworks/models/{entry.id}"
    if source.ids in ("strip-org", "after-vendor"):
        tail = entry.id.split("/", 1)[-1]
        return tail, tail
    if source.ids == "lower-repo":
        tail = entry.id.split("/", 1)[-1].lower()
        return tail, tail
    if source.ids == "lower-id":
        return entry.id.lower(), entry.id.lower()
    if source.ids == "poe":
        slug = entry.id.split("/", 1)[-1]
        tail = "-".join(part.upper() if part == "gpt" else part[:1].upper() + part[1:] for part in slug.split("-"))
        return tail, tail
    if source.ids.startswith("prefix:"):
        tail = source.ids.removeprefix("prefix:") + entry.id
        return tail, tail
    return entry.id, entry.id


def model_from_entry(source: Source, entry: PriceEntry) -> Model | None:
    """One price-list entry as a model at ``source.provider``; None when it is not routable or unpriced."""
    lowered = entry.id.lower()
    modality = modality_of(entry.id)
    if _NOT_ROUTABLE.search(lowered) and modality != "image":
        return None
    if source.keep and not re.search(source.keep, lowered):
        return None
    if source.drop and re.search(source.drop, lowered):
        return None
    marked_free = lowered.endswith(":free")
    if entry.prompt is None and not marked_free and not (modality == "transcription" and entry.audio_hour):
        return None  # no usable price: we would bill it wrongly
    prompt = Decimal(0) if source.local else entry.prompt or Decimal(0)
    completion = Decimal(0) if source.local else entry.completion or Decimal(0)
    if modality == "image" and entry.image_output is not None and not source.local:
        completion = entry.image_output  # an image model's output is images, at their own rate
    free = (marked_free or (entry.prompt is not None and prompt == 0 and completion == 0)) and not source.estimate
    if modality == "transcription" and entry.audio_hour and not source.local:
        free = False
    tail, upstream = _spell(source, entry)
    specialised = bool(_NOT_GENERAL.search(lowered))
    kind = "local" if source.local else "estimate" if source.estimate else "genai-prices"
    return Model(
        id=f"{source.provider}/{tail}",
        name=entry.name or tail,
        provider=source.provider,
        upstream_id=upstream,
        context_length=entry.context_length,
        prompt_price=decimal_str(prompt),
        completion_price=decimal_str(completion),
        cache_read_price=decimal_str(entry.cache_read) if entry.cache_read is not None and not source.local else None,
        cache_write_price=decimal_str(entry.cache_write) if entry.cache_write is not None and not source.local else None,
        modality=modality,
        capabilities=capabilities_of(entry.id, modality),
        free=free,
        tier=tier_for(prompt, completion, free),
        deprecated=entry.deprecated,
        audio_hour_price=decimal_str(entry.audio_hour) if entry.audio_hour and not source.local else None,
        pricing_source="local" if source.local else f"{kind}:{entry.feed}",
        auto=not source.local and not specialised,
        **({"output_modalities": ("image",), "image_input_price": decimal_str(entry.image_input)
            if entry.image_input is not None and not source.local else None} if modality == "image" else {}),
    )


def listed_models(providers: dict[str, Provider]) -> dict[str, Model]:
    """Every model the registered providers serve, from ``SOURCES``, in registry order."""
    by_provider: dict[str, list[Source]] = {}
    for source in SOURCES:
        by_provider.setdefault(source.provider, []).append(source)
    models: dict[str, Model] = {}
    for provider_id, provider in providers.items():
        for source in by_provider.get(provider_id, ()):
            for entry in _entries_for(source):
                model = model_from_entry(source, entry)
                if model is None or model.id in models:
                    continue
                if MODALITY_CAPABILITY[model.modality] not in provider.capabilities:
                    continue
                models[model.id] = model
        for model in media.LISTED:  # priced per image or character: no price feed lists them so
            if model.provider == provider_id and MODALITY_CAPABILITY[model.modality] in provider.capabilities:
                models.setdefault(model.id, model)
    return models
