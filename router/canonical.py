"""Canonical model ids: ``author/model`` as OpenRouter spells them, shared by every seller of the weights.

Sellers spell one model many ways — ``llama-3.3-70b-versatile`` (Groq), ``meta-llama/Llama-3.3-70B-
Instruct-Turbo`` (Together), ``accounts/fireworks/models/llama-v3p3-70b-instruct`` (Fireworks),
``llama-3.3-70b`` (Cerebras). ``match_key`` reduces an id to what identifies the weights (family, version,
size, date) by dropping serving words (instruct, turbo, versatile, fp8, …); ids with the same key are one
model. The canonical slug is the OpenRouter id with that key (from genai-prices' and models.dev's
OpenRouter lists), else ``author/<repo>`` for a Hugging Face repo id, else ``author/<id>`` for a vendor's
own model, else the endpoint's own ``provider/model`` id. ``ALIASES`` fixes what the data cannot match.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

# Words that say how a seller serves the weights, not which weights they are.
_NOISE = frozenset({
    "instruct", "turbo", "versatile", "instant", "fp8", "fp16", "bf16", "fast", "hf", "it", "latest", "chat",
    "specdec", "meta", "tput", "serverless", "maas",
})
_QUANTIZATION = re.compile(r"(?:^|[-_.])(fp8|fp16|bf16|fp4|int8|int4|awq|gptq)(?:$|[-_.])")
_FIREWORKS_VERSION = re.compile(r"v(\d+)p(\d+)")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TOKEN = re.compile(r"[a-z]+|\d+")
_LONG_DATE = re.compile(r" \d{8}$")

# Hugging Face orgs → OpenRouter authors.
HF_AUTHORS = {
    "meta-llama": "meta-llama", "qwen": "qwen", "deepseek-ai": "deepseek", "mistralai": "mistralai",
    "google": "google", "openai": "openai", "moonshotai": "moonshotai", "zai-org": "z-ai",
    "minimaxai": "minimax", "nvidia": "nvidia", "microsoft": "microsoft", "ibm-granite": "ibm-granite",
}
# Registry vendors (router/catalog.py's vendor_of) → OpenRouter authors.
VENDOR_AUTHORS = {
    "openai": "openai", "anthropic": "anthropic", "google": "google", "xai": "x-ai", "mistral": "mistralai",
    "deepseek": "deepseek", "cohere": "cohere", "perplexity": "perplexity", "moonshot": "moonshotai",
    "zai": "z-ai", "minimax": "minimax",
}
# Seller ids the key cannot match (renamed families): upstream id (lowercased) → canonical slug.
ALIASES = {
    "deepseek-reasoner": "deepseek/deepseek-r1",
    "llama3-70b-8192": "meta-llama/llama-3-70b-instruct",
    "llama3-8b-8192": "meta-llama/llama-3-8b-instruct",
    # Mistral's own ids carry a YYMM release where OpenRouter names the version.
    "mistral-small-2506": "mistralai/mistral-small-3.2-24b-instruct",
    "mistral-small-3.2-24b-instruct-2506": "mistralai/mistral-small-3.2-24b-instruct",
    "mistral-nemo-instruct-2407": "mistralai/mistral-nemo",
    "open-mistral-nemo": "mistralai/mistral-nemo",
}


@functools.lru_cache(maxsize=32768)
def match_key(model_id: str, provider: str = "") -> str:
    """What identifies the weights behind a seller's id: ``"llama 3 3 70 b"`` for every Llama 3.3 70B."""
    last = model_id.rsplit("/", 1)[-1].lower().split(":", 1)[0]
    last = _FIREWORKS_VERSION.sub(r"\1.\2", last)
    last = _QUANTIZATION.sub("-", last)
    last = _ISO_DATE.sub(r"\1\2\3", last)
    tokens = _TOKEN.findall(last)
    if provider and tokens and tokens[0] == provider:
        tokens = tokens[1:]  # "databricks-meta-llama-3-3-70b-instruct"
    return " ".join(t for t in tokens if t not in _NOISE)


def quantization_of(model_id: str) -> str | None:
    found = _QUANTIZATION.search(model_id.lower())
    return found.group(1) if found else None


class SlugIndex:
    """OpenRouter slugs, exactly and by match key. An id that *is* a slug (``openai/gpt-4-turbo``), or a
    slug's unambiguous model part (``gpt-4-turbo``, ``claude-opus-4.6-fast``), is that model: the noise
    words of the match key would otherwise fold a vendor's distinct products (GPT-4 Turbo, a fast mode
    at six times the price) into their base model. Where two slugs share a key, the instruct one wins
    (that is what sellers serve), then the shorter."""

    def __init__(self, slugs: list[str]) -> None:
        self.by_key: dict[str, str] = {}
        self.exact: dict[str, str] = {}
        tails: dict[str, set[str]] = {}
        for slug in sorted(set(slugs), key=lambda s: ("instruct" not in s, len(s), s)):
            if ":" in slug or "/" not in slug or slug.startswith("~"):
                continue
            self.by_key.setdefault(match_key(slug), slug)
            self.exact.setdefault(slug.lower(), slug)
            tails.setdefault(slug.lower().rsplit("/", 1)[-1], set()).add(slug)
        self.by_tail = {tail: next(iter(found)) for tail, found in tails.items() if len(found) == 1}

    def find(self, model_id: str, provider: str = "") -> str | None:
        base = model_id.lower().split(":", 1)[0]
        lowered = base.rsplit("/", 1)[-1]
        if lowered in ALIASES:
            return ALIASES[lowered]
        exact = self.exact.get(base) or self.by_tail.get(lowered)
        if exact is not None:
            return exact
        key = match_key(model_id, provider)
        slug = self.by_key.get(key)
        if slug is None and _LONG_DATE.search(key):  # a dated snapshot: the undated model
            slug = self.by_key.get(_LONG_DATE.sub("", key))
        if slug is None and key.endswith(" 0"):  # Anthropic's "claude-sonnet-4-0" is "claude-sonnet-4"
            slug = self.by_key.get(key[:-2])
        return slug


@functools.lru_cache(maxsize=1)
def openrouter_slugs() -> tuple[str, ...]:
    """Every OpenRouter ``author/model`` id in genai-prices (router/metadata.py adds models.dev's)."""
    try:
        from genai_prices import data
    except ImportError:
        return ()
    return tuple(m.id for provider in data.providers if provider.id == "openrouter" for m in provider.models)


def canonical_of(index: SlugIndex, provider: str, upstream_id: str,
                 vendor_of: Callable[[str], str | None]) -> str | None:
    """The canonical slug of one endpoint, or None when nothing but the endpoint's own id names it.
    ``vendor_of`` names the original vendor of a bare id (router/catalog.py), asked only when needed."""
    slug = index.find(upstream_id, provider)
    if slug is not None:
        return slug
    base = upstream_id.split(":", 1)[0]
    if base.count("/") == 1:
        org, repo = base.lower().split("/")
        if org in HF_AUTHORS:
            return f"{HF_AUTHORS[org]}/{repo}"
    vendor = vendor_of(base) if "/" not in base else None
    if vendor is not None and vendor in VENDOR_AUTHORS:
        return f"{VENDOR_AUTHORS[vendor]}/{base.lower()}"
    return None
