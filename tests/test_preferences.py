"""The pure planner with OpenRouter's ``provider`` preferences and variants, on a small hand-made catalog.

One canonical model with five paid endpoints at known prices and one free ``:free`` copy, so every
preference's effect (and the 4xx when a preference leaves nothing) is visible in the plan.
"""

from __future__ import annotations

import pytest

from common.errors import GatewayError
from common.settings import load_settings
from common.wire import MaxPrice, ProviderPreferences
from router.catalog import Catalog, Model
from router.health import HealthSnapshot
from router.plan import plan_for
from router.providers import resolve_providers

LLAMA = "meta-llama/llama-3.3-70b-instruct"
BASIC = ("max_tokens", "temperature", "top_p", "stop", "seed")
TOOLS = (*BASIC, "tools", "tool_choice")


def _endpoint(provider: str, upstream: str, prompt: str, completion: str, *, params: tuple[str, ...] = TOOLS,
              quantization: str | None = None, free: bool = False) -> Model:
    return Model(id=f"{provider}/{upstream}", name="Llama 3.3 70B", provider=provider, upstream_id=upstream,
                 prompt_price=prompt, completion_price=completion, canonical=LLAMA, context_length=131072,
                 supported_parameters=params, quantization=quantization, free=free)


ENDPOINTS = (
    _endpoint("groq", "llama-3.3-70b-versatile", "0.00000059", "0.00000079"),
    _endpoint("cerebras", "llama-3.3-70b", "0.00000085", "0.0000012", params=BASIC),
    _endpoint("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "0.00000088", "0.00000088",
              quantization="fp8"),
    _endpoint("deepinfra", "meta-llama/Llama-3.3-70B-Instruct", "0.00000023", "0.0000004", quantization="bf16"),
    _endpoint("novita", "meta-llama/llama-3.3-70b-instruct", "0.00000039", "0.00000039"),
    _endpoint("openrouter", "meta-llama/llama-3.3-70b-instruct:free", "0", "0", free=True),
)
BY_PRICE = ["deepinfra", "novita", "groq", "together", "cerebras"]  # prompt + completion


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    env = {f"{p.upper()}_API_KEY": "k" for p in ("groq", "cerebras", "together", "deepinfra", "novita",
                                                  "openrouter")}
    settings = load_settings(env)
    return Catalog(ENDPOINTS, resolve_providers(settings))


def providers(catalog: Catalog, model: str = LLAMA, **kwargs: object) -> list[str]:
    return [route.provider for route in plan_for(catalog, model, **kwargs)]  # type: ignore[arg-type]


def prefs(**fields: object) -> ProviderPreferences:
    return ProviderPreferences(**fields)  # type: ignore[arg-type]


def refused(catalog: Catalog, model: str = LLAMA, **kwargs: object) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        plan_for(catalog, model, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_default_order_is_price_with_open_circuits_last(catalog: Catalog) -> None:
    assert providers(catalog) == BY_PRICE
    down = HealthSnapshot(open_circuits=frozenset({"deepinfra"}))
    assert providers(catalog, health=down) == [*BY_PRICE[1:], "deepinfra"]


def test_a_provider_id_pins_its_endpoint_first(catalog: Catalog) -> None:
    assert providers(catalog, "cerebras/llama-3.3-70b") == ["cerebras", "deepinfra", "novita", "groq", "together"]


def test_order_with_and_without_fallbacks(catalog: Catalog) -> None:
    assert providers(catalog, preferences=prefs(order=["together", "Groq"])) == [
        "together", "groq", "deepinfra", "novita", "cerebras"]
    assert providers(catalog, preferences=prefs(order=["together", "groq"], allow_fallbacks=False)) == [
        "together", "groq"]
    assert providers(catalog, preferences=prefs(allow_fallbacks=False)) == ["deepinfra"]


def test_only_and_ignore(catalog: Catalog) -> None:
    assert providers(catalog, preferences=prefs(only=["Cerebras", "groq"])) == ["groq", "cerebras"]
    assert providers(catalog, preferences=prefs(ignore=["deepinfra", "novita"])) == ["groq", "together", "cerebras"]
    error = refused(catalog, preferences=prefs(only=["anthropic"]))
    assert (error.status, error.error_type, error.param) == (404, "no_endpoints_found", "provider.only")
    assert "provider.only" in error.message
    error = refused(catalog, preferences=prefs(ignore=BY_PRICE))
    assert error.param == "provider.ignore"


def test_sort_by_latency_and_throughput_and_the_nitro_and_floor_variants(catalog: Catalog) -> None:
    health = HealthSnapshot(latencies={"together": 0.2, "cerebras": 0.1, "groq": 0.3})
    assert providers(catalog, health=health, preferences=prefs(sort="latency")) == [
        "cerebras", "together", "groq", "deepinfra", "novita"]  # unmeasured last, by price
    assert providers(catalog, health=health, preferences=prefs(sort="throughput"))[0] == "cerebras"
    assert providers(catalog, LLAMA + ":nitro", health=health)[0] == "cerebras"
    assert providers(catalog, LLAMA + ":floor", health=health) == BY_PRICE
    assert providers(catalog, health=health, preferences=prefs(sort="price")) == BY_PRICE


def test_free_variant_and_hidden_free_copies(catalog: Catalog) -> None:
    assert "openrouter" not in providers(catalog)  # a :free copy serves only the :free variant
    assert providers(catalog, LLAMA + ":free") == ["openrouter"]
    error = refused(catalog, LLAMA + ":free", preferences=prefs(ignore=["openrouter"]))
    assert error.param == "provider.ignore"
    assert providers(catalog, "cerebras/llama-3.3-70b:free") == ["openrouter"]  # the model's free endpoint
    error = refused(catalog, LLAMA + ":free", preferences=prefs(only=["groq"]))
    assert error.param == "provider.only"


def test_unsupported_variants_are_refused(catalog: Catalog) -> None:
    for variant in ("online", "thinking"):
        error = refused(catalog, f"{LLAMA}:{variant}")
        assert (error.status, error.param) == (400, "model") and f"':{variant}'" in error.message


def test_require_parameters(catalog: Catalog) -> None:
    tools = frozenset({"tools", "temperature"})
    assert providers(catalog, preferences=prefs(require_parameters=True), parameters=tools) == [
        "deepinfra", "novita", "groq", "together"]  # cerebras does not list tools
    assert providers(catalog, parameters=tools) == BY_PRICE  # only when asked for
    error = refused(catalog, preferences=prefs(require_parameters=True, only=["cerebras"]), parameters=tools)
    # explicitly required and taken by no endpoint left: a 400 naming the parameter (issue 21, item 1)
    assert (error.status, error.error_type, error.param) == (400, "invalid_request", "tools")
    assert "require_parameters" in error.message


def test_max_price_per_million(catalog: Catalog) -> None:
    assert providers(catalog, preferences=prefs(max_price=MaxPrice(prompt=0.6, completion=0.8))) == [
        "deepinfra", "novita", "groq"]
    assert providers(catalog, preferences=prefs(max_price=MaxPrice(completion=0.4))) == ["deepinfra", "novita"]
    error = refused(catalog, preferences=prefs(max_price=MaxPrice(prompt=0.1)))
    assert error.param == "provider.max_price"


def test_data_collection_deny_keeps_providers_that_do_not_train(catalog: Catalog) -> None:
    kept = providers(catalog, preferences=prefs(data_collection="deny"))
    assert "novita" not in kept and kept == ["deepinfra", "groq", "together", "cerebras"]
    error = refused(catalog, preferences=prefs(data_collection="deny", only=["novita"]))
    assert error.param == "provider.data_collection"


def test_quantizations(catalog: Catalog) -> None:
    assert providers(catalog, preferences=prefs(quantizations=["fp8"])) == ["together"]
    assert providers(catalog, preferences=prefs(quantizations=["bf16", "fp8"])) == ["deepinfra", "together"]
    assert refused(catalog, preferences=prefs(quantizations=["int4"])).param == "provider.quantizations"


def test_equal_prices_are_sticky_per_caller_and_spread_across_callers() -> None:
    twins = (_endpoint("groq", "a", "0.000001", "0.000001"), _endpoint("cerebras", "b", "0.000001", "0.000001"))
    settings = load_settings({"GROQ_API_KEY": "k", "CEREBRAS_API_KEY": "k"})
    catalog = Catalog(twins, resolve_providers(settings))
    firsts = {providers(catalog, affinity=f"key-{i}")[0] for i in range(32)}
    assert firsts == {"groq", "cerebras"}  # different keys spread over equally cheap endpoints
    snapshots = [HealthSnapshot(error_rates={"groq": rate, "cerebras": 0.3 - rate}) for rate in (0.0, 0.1, 0.2, 0.3)]
    for i in range(8):
        chosen = {providers(catalog, affinity=f"key-{i}", health=snapshot)[0] for snapshot in snapshots}
        assert len(chosen) == 1  # one key stays on one endpoint while its circuit is closed


def test_models_alone_and_as_fallbacks(catalog: Catalog) -> None:
    assert providers(catalog, None, extra_models=["cerebras/llama-3.3-70b"])[0] == "cerebras"
    assert refused(catalog, None, extra_models=[]).param == "model"
    routes = plan_for(catalog, "groq/llama-3.3-70b-versatile", extra_models=["nosuch/model"])
    assert routes[0].provider == "groq"  # an unusable fallback is skipped, not fatal


def test_unknown_and_dated_ids(catalog: Catalog) -> None:
    error = refused(catalog, "groq/llama-9")
    assert (error.status, error.error_type) == (404, "model_not_found")
    route = plan_for(catalog, "groq/llama-3.3-70b-versatile-20991231")[0]
    assert (route.model, route.upstream_model) == ("groq/llama-3.3-70b-versatile", "llama-3.3-70b-versatile-20991231")


def test_preferences_filter_auto_plans() -> None:
    settings = load_settings({"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    from router.catalog import build_catalog

    catalog = build_catalog(settings, resolve_providers(settings))
    plan = plan_for(catalog, "auto-frontier", messages=[{"role": "user", "content": "hi"}],
                    preferences=prefs(ignore=["openai"]))
    assert plan and {r.provider for r in plan} == {"anthropic"}
    error = refused(catalog, "auto-frontier", messages=[{"role": "user", "content": "hi"}],
                    preferences=prefs(only=["groq"]))
    assert error.param == "provider.only"
