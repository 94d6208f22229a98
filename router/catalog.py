"""The model catalog: every model the gateway can route to, as one immutable index built at start-up.

Lookups are dictionary hits. A model id is ``provider/model``; bare ids and aliases resolve to a default
provider. ``provider/anything`` at a known provider routes even when the model is not listed (the provider
is the judge of its own model ids); a bare id we do not know is a 404 with a hint.

Where the listings come from is spelled out in ``router/sources.py``: the maintained ``genai-prices``
data snapshot, mapped onto the provider registry; the operator's config file goes on top here.
"""

from __future__ import annotations

import functools
import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any
from decimal import Decimal

import msgspec

from common.errors import GatewayError
from common.settings import ConfigError, ModelConfig, Settings
from router.canonical import SlugIndex, canonical_of, openrouter_slugs, quantization_of
from router.forwarding import per_use_cost
from router.metadata import enrich, seller_ids
from router.model import Model
from router.providers import Provider
from router.shaping import EndpointShape, shape_of, supported_parameters
from router.sources import listed_models, price_feeds

AUTO_MODELS = ("auto", "auto-free", "auto-balanced", "auto-frontier")


# --- bare ids ---------------------------------------------------------------------------------------------

# A bare id goes to the model's original vendor when that vendor lists it, else to the first provider in
# registry order that does.
_VENDOR_OF: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), vendor)
    for pattern, vendor in (
        (r"^(gpt-|o\d|chatgpt|text-embedding|whisper|davinci|babbage)", "openai"),
        (r"^claude", "anthropic"),
        (r"^(gemini|gemma)", "google"),
        (r"^grok", "xai"),
        (r"^(mistral|mixtral|codestral|ministral|magistral|pixtral|devstral|voxtral)", "mistral"),
        (r"^deepseek", "deepseek"),
        (r"^(command|embed-|c4ai)", "cohere"),
        (r"^(sonar|pplx)", "perplexity"),
        (r"^kimi", "moonshot"),
        (r"^glm", "zai"),
        (r"^minimax", "minimax"),
    )
)


def vendor_of(tail: str) -> str | None:
    lowered = tail.lower()
    return next((vendor for pattern, vendor in _VENDOR_OF if pattern.match(lowered)), None)


# --- the catalog ------------------------------------------------------------------------------------------

# The "did you mean" hint answers unauthenticated requests, so its cost is bounded whatever the id: only its
# first characters count, and of their three-letter pieces only the rarest few in the catalog's names pick
# the candidates (a typo breaks at most three pieces); the best candidates are then scored by the pieces
# they share with the id (Dice). Measured (``tests/test_flood.py`` prints it): ~0.1 ms for any id, where
# difflib over the names sharing a word with the id took up to 7 ms for ids made of two listed names.
HINT_ID_CHARS = 80  # the longest listed id is 72 characters
HINT_RARE_PIECES = 8
HINT_NAMES_PER_PIECE = 256
HINT_CANDIDATES = 16
HINT_CUTOFF = 0.5


class Catalog:
    """Models by id and alias, and endpoints by canonical id. Build once; never mutated afterwards."""

    def __init__(self, models: Iterable[Model], providers: dict[str, Provider],
                 passthrough: dict[str, Model] | None = None) -> None:
        self.providers = providers
        self.models: dict[str, Model] = {}
        self.aliases: dict[str, str] = {}
        # provider id -> the configured price for ids it serves that the catalog does not list
        self.passthrough: dict[str, Model] = dict(passthrough or {})
        # model id -> what that endpoint takes (router/shaping.py), folded once here: a request pays a
        # dictionary hit. Its supported_parameters leave out what the provider's rules say it refuses, so
        # ``provider.require_parameters`` and the listings tell the truth about it.
        self.shapes: dict[str, EndpointShape] = {}
        for model in models:
            shape = self._shape_of(model)
            trimmed = supported_parameters(model, shape)
            if trimmed != model.supported_parameters:
                model = msgspec.structs.replace(model, supported_parameters=trimmed)
            self.models[model.id] = model
            self.shapes[model.id] = shape
        for model in self.models.values():
            for alias in model.aliases:
                self.aliases.setdefault(alias, model.id)
        self._by_tail: dict[str, list[Model]] = {}
        for model in self.models.values():
            self._by_tail.setdefault(_tail(model.id), []).append(model)
        # canonical id -> its endpoints, registry order (the planner orders them per request)
        grouped: dict[str, list[Model]] = {}
        for model in self.models.values():
            grouped.setdefault(model.slug, []).append(model)
        self.endpoints = {slug: tuple(group) for slug, group in grouped.items()}
        order = {pid: i for i, pid in enumerate(providers)}
        for tail, group in self._by_tail.items():
            if tail not in self.aliases:
                self.aliases[tail] = min(group, key=lambda m: _default_rank(m, tail, order)).id
        self._lower: dict[str, str] = {}
        for name in (*self.models, *self.aliases, *self.endpoints):
            self._lower.setdefault(name.lower(), name)

    def __len__(self) -> int:
        return len(self.models)

    def get(self, model_id: str) -> Model | None:
        """The endpoint an id names: an endpoint id, an alias, or a configured pass-through id."""
        model = self.models.get(model_id)
        if model is None:
            target = self.aliases.get(model_id)
            if target is None:
                exact = self._lower.get(model_id.lower())
                if exact is None:
                    return self._passthrough(model_id)
                target = self.aliases.get(exact, exact)
            model = self.models.get(target)
        return model

    def canonical(self, model_id: str) -> str | None:
        """The canonical id ``model_id`` names when it is one (any case), else None."""
        if model_id in self.endpoints:
            return model_id
        exact = self._lower.get(model_id.lower())
        return exact if exact is not None and exact in self.endpoints else None

    def shape(self, model: Model) -> EndpointShape:
        """What ``model``'s endpoint takes (worked out on the spot for a pass-through id)."""
        shape = self.shapes.get(model.id)
        return shape if shape is not None else self._shape_of(model)

    def _shape_of(self, model: Model) -> EndpointShape:
        provider = self.providers.get(model.provider)
        return shape_of(model, provider.kind if provider else "openai", bool(provider and provider.local))

    def endpoints_of(self, slug: str) -> tuple[Model, ...]:
        return self.endpoints.get(slug, ())

    def _passthrough(self, model_id: str) -> Model | None:
        """``provider/anything`` at a provider whose unlisted ids are allowed: a local server (the
        operator's own machine, nothing to bill) or one with a configured ``provider/*`` price."""
        provider_id, sep, upstream = model_id.partition("/")
        provider = self.providers.get(provider_id)
        if not (sep and upstream and provider is not None):
            return None
        template = self.passthrough.get(provider_id)
        if template is not None:
            return msgspec.structs.replace(template, id=model_id, name=upstream, upstream_id=upstream,
                                           canonical="")
        if provider.local:
            return Model(id=model_id, name=upstream, provider=provider_id, upstream_id=upstream, listed=False,
                         pricing_source="local", auto=False)
        return None

    def snapshot(self, model_id: str) -> tuple[Model, str] | None:
        """A dated snapshot the catalog does not list (``…-20991231``): (its undated entry, the upstream
        id to send). Priced as the undated model, never free by accident."""
        match = _DATED.match(model_id)
        if match is None:
            return None
        base = self.get(match.group(1))
        if base is None:
            return None
        return base, base.upstream_id + match.group(2)

    def resolve(self, model_id: str) -> Model:
        """The endpoint for a client's id, or a 404 ``model_not_found`` in the envelope.

        A canonical id resolves to its first endpoint (the planner picks among all of them)."""
        model = self.get(model_id)
        if model is not None:
            return model
        slug = self.canonical(model_id)
        if slug is not None:
            return self.endpoints[slug][0]
        dated = self.snapshot(model_id)
        if dated is not None:
            return dated[0]
        suggestions = self.suggest(model_id)
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        raise GatewayError(
            "model_not_found",
            f"The model {model_id!r} does not exist or is not served here.{hint} "
            "Use an 'author/model' or 'provider/model' id from GET /models, or one of: "
            + ", ".join(AUTO_MODELS) + ". Ids a provider serves but the catalog does not list need a "
            "configured price ([[models]] id = \"provider/*\" with pricing).",
            param="model",
        )

    def suggest(self, model_id: str, limit: int = 3) -> list[str]:
        """Close known ids for a typo, best first; bounded work whatever the id (see ``HINT_*`` above)."""
        typed = model_id[:HINT_ID_CHARS].lower()
        pieces = _pieces(typed)
        index = self._piece_index
        rarest = sorted((index[p] for p in pieces if p in index), key=len)[:HINT_RARE_PIECES]
        shared: Counter[str] = Counter()
        for names in rarest:
            shared.update(names[:HINT_NAMES_PER_PIECE])
        scored = []
        for name, _ in shared.most_common(HINT_CANDIDATES):
            theirs = _pieces(name.lower())
            dice = 2 * len(pieces & theirs) / (len(pieces) + len(theirs))
            if dice >= HINT_CUTOFF:
                scored.append((-dice, name))
        return [name for _, name in sorted(scored)[:limit]]

    @functools.cached_property
    def _piece_index(self) -> dict[str, list[str]]:
        """Three-letter piece -> the names containing it; built on the first unknown id (workers never need it)."""
        index: dict[str, list[str]] = {}
        for name in self._lower.values():
            for piece in _pieces(name.lower()):
                index.setdefault(piece, []).append(name)
        return index

    def label(self, model_id: str) -> str:
        """A metrics label for a model id, from a set the catalog bounds: a listed endpoint or canonical id
        (aliases and case variants resolve to theirs), an auto id, ``provider/*`` for a provider's unlisted
        ids, else ``unknown``. Clients choose model ids; a label must never be theirs to mint."""
        if model_id in self.models or model_id in self.endpoints or model_id in AUTO_MODELS:
            return model_id
        exact = self._lower.get(model_id.lower())
        if exact is not None:
            return self.aliases.get(exact, exact)
        target = self.aliases.get(model_id)
        if target is not None:
            return target
        provider_id, sep, rest = model_id.partition("/")
        provider = self.providers.get(provider_id)
        if sep and rest and provider is not None and (provider_id in self.passthrough or provider.local):
            return provider_id + "/*"
        return "unknown"

    def listed(self, modality: str | None = None) -> list[Model]:
        return [m for m in self.models.values() if m.listed and (modality is None or m.modality == modality)]

    def serving(self, model: Model) -> list[Model]:
        """The same model at every provider that lists it: its canonical id's endpoints, and listings with
        the same id after the provider prefix (config-file models the data cannot name)."""
        found = list(self.endpoints.get(model.slug, ()))
        found += [m for m in self._by_tail.get(_tail(model.id), ()) if m not in found]
        return [m for m in found if m.modality == model.modality]

    def by_provider(self, provider_id: str) -> list[Model]:
        return [m for m in self.models.values() if m.provider == provider_id]

    def cost(self, model: Model, usage: dict[str, Any]) -> Decimal:
        """USD for one request's canonical usage, exact: the one place every route prices tokens (and the
        server tool uses an answer reports, such as Anthropic's web searches: ``router/forwarding.py``).

        ``prompt_tokens`` counts all input (OpenAI semantics); the cached and cache-written part of it is
        billed at the cache rates where the provider lists them, the rest at the prompt rate.
        """
        prompt = _count(usage.get("prompt_tokens"))
        details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        cached = min(prompt, _count(details.get("cached_tokens")))
        written = min(prompt - cached, _count(details.get("cache_write_tokens")))
        rate = Decimal(model.prompt_price)
        read_rate = Decimal(model.cache_read_price) if model.cache_read_price is not None else rate
        write_rate = Decimal(model.cache_write_price) if model.cache_write_price is not None else rate
        return (rate * (prompt - cached - written) + read_rate * cached + write_rate * written
                + Decimal(model.completion_price) * _count(usage.get("completion_tokens")) + per_use_cost(usage))

    def audio_cost(self, model: Model, seconds: float) -> Decimal:
        """USD for a transcription priced by audio time (0 when the model is priced by tokens only)."""
        if not model.audio_hour_price:
            return Decimal(0)
        return Decimal(model.audio_hour_price) * Decimal(str(seconds)) / 3600


def _pieces(text: str) -> set[str]:
    return {text[i:i + 3] for i in range(len(text) - 2)}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


_DATED = re.compile(r"^(.+?)(-\d{8}|-\d{4}-\d{2}-\d{2})$")


def _tail(model_id: str) -> str:
    return model_id.split("/", 1)[1] if "/" in model_id else model_id


def _default_rank(model: Model, tail: str, order: dict[str, int]) -> tuple[int, int, int, str]:
    """Original vendor first, then sellers whose price list we have, then registry order, then id."""
    vendor_first = 0 if model.provider == vendor_of(tail) else 1
    known = 0 if model.auto and not model.pricing_source.startswith("estimate:") else 1
    return (vendor_first, known, order.get(model.provider, len(order)), model.id)


# Used when genai-prices is not installed, so a bare deployment still lists something.
DEFAULT_MODELS: tuple[Model, ...] = (
    Model(id="openai/gpt-4o-mini", name="GPT-4o mini", provider="openai", upstream_id="gpt-4o-mini",
          context_length=128000, max_output_tokens=16384, prompt_price="0.00000015",
          completion_price="0.0000006", capabilities=frozenset({"tools", "vision", "json"}), tier="balanced"),
    Model(id="openai/gpt-4o", name="GPT-4o", provider="openai", upstream_id="gpt-4o",
          context_length=128000, max_output_tokens=16384, prompt_price="0.0000025",
          completion_price="0.00001", capabilities=frozenset({"tools", "vision", "json"}), tier="frontier"),
)


def model_from_config(cfg: ModelConfig, base: Model | None) -> Model:
    """A config-file entry: overrides fields of ``base`` when the model exists, else defines a new one."""
    provider, _, tail = cfg.id.partition("/")
    provider = cfg.provider or (base.provider if base else provider)
    fields: dict[str, object] = {}
    if cfg.name is not None:
        fields["name"] = cfg.name
    if cfg.upstream_id is not None:
        fields["upstream_id"] = cfg.upstream_id
    if cfg.context_length is not None:
        fields["context_length"] = cfg.context_length
    if cfg.max_output_tokens is not None:
        fields["max_output_tokens"] = cfg.max_output_tokens
    if "prompt" in cfg.pricing:
        fields["prompt_price"] = cfg.pricing["prompt"]
    if "completion" in cfg.pricing:
        fields["completion_price"] = cfg.pricing["completion"]
    for name in ("input_cache_read", "input_cache_write"):  # OpenRouter's names for the cache rates
        if name in cfg.pricing:
            fields[name.replace("input_", "") + "_price"] = cfg.pricing[name]
    if cfg.pricing:
        fields["pricing_source"] = "config"
    if cfg.modality is not None:
        fields["modality"] = cfg.modality
    if cfg.capabilities is not None:
        fields["capabilities"] = frozenset(cfg.capabilities)
    if cfg.free is not None:
        fields["free"] = cfg.free
        if cfg.free and cfg.tier is None:
            fields["tier"] = "free"
    if cfg.tier is not None:
        fields["tier"] = cfg.tier
    if cfg.aliases:
        fields["aliases"] = tuple(cfg.aliases)
    if cfg.fallbacks:
        fields["fallbacks"] = tuple(cfg.fallbacks)
    if base is not None:
        return msgspec.structs.replace(base, **fields)
    return Model(id=cfg.id, name=str(fields.pop("name", tail or cfg.id)), provider=provider,
                 upstream_id=str(fields.pop("upstream_id", tail or cfg.id)), **fields)  # type: ignore[arg-type]


def build_catalog(settings: Settings, providers: dict[str, Provider]) -> Catalog:
    """genai-prices listings for the registered providers, then the config file's add/override/hide.

    A hidden id may be a glob (``openrouter/*``) to hide many models at once; a visible ``provider/*``
    entry prices that provider's unlisted ids. A model only the config file defines is taken as the
    operator wrote it: no canonical id or metadata is guessed from its upstream id (``local/tiny`` serving
    ``gpt-4o-mini`` on the operator's server is not OpenAI's model).
    """
    models = listed_models(providers) if price_feeds() else {m.id: m for m in DEFAULT_MODELS}
    passthrough: dict[str, Model] = {}
    operator_defined: set[str] = set()
    for cfg in settings.models:
        if cfg.id.endswith("/*") and not cfg.hidden:
            if "prompt" not in cfg.pricing or "completion" not in cfg.pricing:
                raise ConfigError(f"[[models]] {cfg.id!r} needs pricing.prompt and pricing.completion: ids a "
                                  "provider serves unlisted are billed at the price configured here.")
            passthrough[cfg.id[:-2]] = model_from_config(cfg, None)
            continue
        if cfg.hidden:
            if any(ch in cfg.id for ch in "*?["):
                for model_id in fnmatch.filter(list(models), cfg.id):
                    del models[model_id]
            else:
                models.pop(cfg.id, None)
            continue
        if cfg.id not in models:
            operator_defined.add(cfg.id)
        models[cfg.id] = model_from_config(cfg, models.get(cfg.id))
    index = SlugIndex([*openrouter_slugs(), *seller_ids("openrouter")])
    annotated = (model if model.id in operator_defined else annotate(index, model) for model in models.values())
    return Catalog(annotated, providers, passthrough)


def annotate(index: SlugIndex, model: Model) -> Model:
    """An endpoint with its canonical id, quantization and models.dev metadata filled in."""
    fields: dict[str, object] = {}
    if not model.canonical:
        slug = canonical_of(index, model.provider, model.upstream_id, vendor_of)
        if slug is not None and slug != model.id:
            fields["canonical"] = slug
    if model.quantization is None:
        quantization = quantization_of(model.upstream_id)
        if quantization is not None:
            fields["quantization"] = quantization
    if fields:
        model = msgspec.structs.replace(model, **fields)
    return enrich(model)
