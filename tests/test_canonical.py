"""Mapping quality: well-known open models are one canonical model at every provider that hosts them, and
the models.dev metadata lands on the catalog's entries.

The host lists are what the kept data (genai-prices, models.dev) says those providers serve, spelled each
provider's own way (Groq's ``-versatile``, Fireworks' ``v3p1``, Cerebras' ``llama3.1-8b``, Databricks'
prefix, Cloudflare's ``@cf/…-fp8-fast``, DeepSeek's ``deepseek-reasoner``); a miss here is a seller the
router cannot fall over to.
"""

from __future__ import annotations

import pytest

from common.settings import load_settings
from router.canonical import match_key
from router.catalog import Catalog, build_catalog
from router.providers import resolve_providers

WELL_KNOWN = {
    "meta-llama/llama-3.3-70b-instruct": {
        "groq", "cerebras", "together", "deepinfra", "sambanova", "nebius", "hyperbolic", "novita", "openrouter",
        "huggingface", "ovhcloud", "scaleway", "databricks", "cloudflare", "avian", "chutes", "siliconflow"},
    "meta-llama/llama-3.1-8b-instruct": {
        "groq", "cerebras", "together", "fireworks", "deepinfra", "sambanova", "nebius", "novita", "openrouter",
        "cloudflare", "databricks", "ovhcloud", "scaleway"},
    "openai/gpt-oss-120b": {
        "openai", "groq", "cerebras", "together", "fireworks", "deepinfra", "sambanova", "nebius", "hyperbolic",
        "novita", "baseten", "openrouter", "ovhcloud", "cloudflare", "databricks", "github"},
    "openai/gpt-oss-20b": {"openai", "groq", "fireworks", "deepinfra", "openrouter", "cloudflare"},
    "qwen/qwen3-32b": {"groq", "cerebras", "deepinfra", "sambanova", "nebius", "openrouter", "alibaba", "ovhcloud"},
    "qwen/qwen-2.5-72b-instruct": {"deepinfra", "openrouter", "huggingface"},
    "deepseek/deepseek-r1": {"deepseek", "deepinfra", "novita", "hyperbolic", "openrouter", "huggingface"},
    "deepseek/deepseek-r1-0528": {"fireworks", "deepinfra", "sambanova", "nebius", "novita", "openrouter"},
    "deepseek/deepseek-chat-v3-0324": {"deepinfra", "openrouter"},
    "mistralai/mistral-small-3.2-24b-instruct": {"mistral", "openrouter", "ovhcloud"},
    "mistralai/mistral-nemo": {"mistral", "openrouter", "novita", "ovhcloud"},
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    settings = load_settings({})
    return build_catalog(settings, resolve_providers(settings))


@pytest.mark.parametrize("slug", sorted(WELL_KNOWN))
def test_well_known_open_models_are_found_at_every_host(catalog: Catalog, slug: str) -> None:
    hosts = {m.provider for m in catalog.endpoints_of(slug)}
    missing = WELL_KNOWN[slug] - hosts
    assert not missing, f"{slug} not mapped at {sorted(missing)} (found at {sorted(hosts)})"


def test_fine_tunes_and_distills_stay_apart(catalog: Catalog) -> None:
    llama = {m.id for m in catalog.endpoints_of("meta-llama/llama-3.3-70b-instruct")}
    assert not any("distill" in i.lower() or "shisa" in i.lower() for i in llama)
    r1 = {m.id for m in catalog.endpoints_of("deepseek/deepseek-r1")}
    assert not any("0528" in i or "distill" in i.lower() for i in r1)


def test_distinct_products_of_a_vendor_stay_apart(catalog: Catalog) -> None:
    """An id that is itself an OpenRouter slug is that model: GPT-4 Turbo is not GPT-4 and a six-times-
    priced fast mode is not its base model, though the match key's serving words would fold them."""
    gpt4 = {m.upstream_id.rsplit("/", 1)[-1] for m in catalog.endpoints_of("openai/gpt-4")}
    assert gpt4 and not any("turbo" in tail for tail in gpt4), gpt4
    assert "openai/gpt-4-turbo" in {m.id for m in catalog.endpoints_of("openai/gpt-4-turbo")}
    opus = catalog.endpoints_of("anthropic/claude-opus-4.6")
    assert opus and not any(m.upstream_id.endswith("-fast") for m in opus)
    fast = catalog.endpoints_of("anthropic/claude-opus-4.6-fast")
    assert fast and all(m.upstream_id.lower().endswith("-fast") for m in fast)


def test_batch_prices_are_not_real_time_endpoints(catalog: Catalog) -> None:
    """OpenRouter's ":batch" entries price the batch API (half price, answers within hours); listed, they
    would plan first as the cheapest seller of every OpenAI and Anthropic model."""
    batch = [m.id for m in catalog.listed() if m.upstream_id.endswith(":batch")]
    assert batch == []


def test_match_key_drops_serving_words_only() -> None:
    same = ["llama-3.3-70b-versatile", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "llama-3.3-70b",
            "accounts/fireworks/models/llama-v3p3-70b-instruct", "@cf/meta/llama-3.3-70b-instruct-fp8-fast",
            "Meta-Llama-3_3-70B-Instruct"]
    assert len({match_key(i) for i in same}) == 1
    assert match_key("llama-3.1-70b-instruct") != match_key("llama-3.3-70b-instruct")
    assert match_key("deepseek-r1") != match_key("deepseek-r1-0528")


def test_provider_ids_and_bare_ids_keep_resolving(catalog: Catalog) -> None:
    assert catalog.resolve("groq/llama-3.3-70b-versatile").provider == "groq"
    assert catalog.resolve("gpt-4o-mini").id == "openai/gpt-4o-mini"
    assert catalog.canonical("Meta-Llama/Llama-3.3-70B-Instruct") == "meta-llama/llama-3.3-70b-instruct"


def test_metadata_of_well_known_models_comes_from_models_dev(catalog: Catalog) -> None:
    sonnet = catalog.get("anthropic/claude-sonnet-4-0")
    assert sonnet is not None
    assert (sonnet.max_output_tokens, sonnet.context_length) == (64000, 200000)
    assert sonnet.created == 1747872000  # 2025-05-22
    assert "image" in sonnet.input_modalities and {"tools", "reasoning"} <= set(sonnet.supported_parameters)
    assert (sonnet.cache_read_price, sonnet.cache_write_price) == ("0.0000003", "0.00000375")
    assert sonnet.slug == "anthropic/claude-sonnet-4"
    mini = catalog.get("openai/gpt-4o-mini")
    assert mini is not None and mini.max_output_tokens == 16384 and mini.created > 0
    groq = catalog.get("groq/llama-3.3-70b-versatile")
    assert groq is not None and groq.max_output_tokens and "tools" in groq.supported_parameters
    chat = [m for m in catalog.models.values() if m.modality == "chat"]
    known = [m for m in chat if m.max_output_tokens]
    assert len(known) / len(chat) > 0.6  # what the dataset knows; the rest keeps "unknown"
    assert all(m.created and m.supported_parameters for m in known if m.pricing_source != "config")


def test_legacy_completion_models_are_not_chat_models(catalog: Catalog) -> None:
    assert not [m.id for m in catalog.listed("chat") if m.id.split("/")[-1].startswith(("davinci", "babbage"))]
