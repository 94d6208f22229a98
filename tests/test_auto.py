"""auto-* model selection. Pure: synthetic catalogs plus the real one, no Redis, no HTTP."""

from __future__ import annotations

import pytest

from common.errors import GatewayError
from common.settings import load_settings
from router.auto import (
    IMAGE_TOKENS,
    choose,
    estimate_prompt_tokens,
    no_model_available,
    wants_vision,
)
from router.catalog import Catalog, Model, build_catalog
from router.providers import Provider, resolve_providers

KINDS = ("auto", "auto-free", "auto-balanced", "auto-frontier")
TOOLS = frozenset({"tools"})
ALL = frozenset({"tools", "vision", "json"})


def _provider(pid: str, configured: bool = True) -> Provider:
    return Provider(id=pid, name=pid, kind="openai", base_url="http://x", api_key="k" if configured else None,
                    auth="bearer", capabilities=frozenset({"chat"}), quirks={}, configured=configured)


def _model(mid: str, tier: str, prompt: str, completion: str, caps: frozenset[str] = TOOLS,
           context: int | None = 128000, **extra: object) -> Model:
    provider, tail = mid.split("/", 1)
    return Model(id=mid, name=tail, provider=provider, upstream_id=tail, tier=tier, free=tier == "free",
                 prompt_price=prompt, completion_price=completion, capabilities=caps, context_length=context,
                 **extra)  # type: ignore[arg-type]


MODELS = [
    _model("alpha/big", "frontier", "0.000003", "0.000015", ALL, 200000),
    _model("alpha/small", "balanced", "0.00000015", "0.0000006", ALL, 128000),
    _model("beta/huge", "frontier", "0.000005", "0.000025", TOOLS, 1000000),
    _model("beta/cheap", "balanced", "0.0000001", "0.0000002", TOOLS, 32000),
    _model("beta/plain", "balanced", "0.00000005", "0.0000001", frozenset(), 8000),
    _model("gamma/free-big", "free", "0", "0", TOOLS, 131072),
    _model("gamma/free-small", "free", "0", "0", frozenset(), 4096),
    _model("gamma/free-nocontext", "free", "0", "0", TOOLS, None),
    _model("gamma/old", "balanced", "0.0000001", "0.0000001", TOOLS, 128000, deprecated=True),
    _model("gamma/embed", "balanced", "0.0000001", "0", frozenset(), 8000, modality="embedding"),
    _model("gamma/local", "free", "0", "0", TOOLS, 128000, auto=False),
]


def _catalog(configured: tuple[str, ...] = ("alpha", "beta", "gamma")) -> Catalog:
    providers = {pid: _provider(pid, pid in configured) for pid in ("alpha", "beta", "gamma")}
    return Catalog(MODELS, providers)


def _ids(models: list[Model]) -> list[str]:
    return [m.id for m in models]


def _choose(catalog: Catalog, kind: str, **kwargs: object) -> list[str]:
    args: dict[str, object] = {"needs_tools": False, "needs_vision": False, "prompt_tokens": 100}
    args.update(kwargs)
    return _ids(choose(catalog, kind, **args))  # type: ignore[arg-type]


def test_auto_free_is_only_free_models() -> None:
    chosen = _choose(_catalog(), "auto-free")
    # tool-capable first; among those a known context window first
    assert chosen == ["gamma/free-big", "gamma/free-nocontext", "gamma/free-small"]


def test_auto_frontier_is_only_frontier_paid_models() -> None:
    assert _choose(_catalog(), "auto-frontier") == ["alpha/big", "beta/huge"]


def test_auto_balanced_prefers_capable_cheap_paid_models() -> None:
    chosen = _choose(_catalog(), "auto-balanced")
    assert chosen[:3] == ["beta/cheap", "alpha/small", "beta/plain"]  # tool-capable first, then price
    assert chosen[3:] == ["alpha/big", "beta/huge"]  # frontier models only after every balanced one
    assert "gamma/old" not in chosen and "gamma/embed" not in chosen


def test_auto_orders_frontier_balanced_free_and_skips_unroutable() -> None:
    chosen = _choose(_catalog(), "auto")
    assert chosen[:2] == ["alpha/big", "beta/huge"]
    assert chosen[2:5] == ["beta/cheap", "alpha/small", "beta/plain"]
    assert chosen[5:] == ["gamma/free-big", "gamma/free-nocontext", "gamma/free-small"]
    assert "gamma/local" not in chosen and "gamma/old" not in chosen


def test_only_configured_providers() -> None:
    assert _choose(_catalog(("gamma",)), "auto-frontier") == []
    assert _choose(_catalog(("gamma",)), "auto") == ["gamma/free-big", "gamma/free-nocontext", "gamma/free-small"]
    assert _choose(_catalog(("alpha", "beta")), "auto-free") == []
    assert _choose(_catalog(("beta",)), "auto-frontier") == ["beta/huge"]


def test_unhealthy_providers_are_skipped_and_degraded_ranked_lower() -> None:
    def health(provider: str, model_id: str) -> float | None:
        return {"alpha": 0.9, "beta": None}.get(provider, 0.0)

    assert _choose(_catalog(), "auto-frontier", health=health) == ["beta/huge"]

    def degraded(provider: str, model_id: str) -> float | None:
        return 0.3 if provider == "alpha" else 0.0

    assert _choose(_catalog(), "auto-frontier", health=degraded) == ["beta/huge", "alpha/big"]
    assert _choose(_catalog(), "auto-frontier", health=lambda p, m: 0.5) == []


def test_context_window_must_fit_prompt_plus_margin() -> None:
    assert _choose(_catalog(), "auto-free", prompt_tokens=4000) == ["gamma/free-big", "gamma/free-nocontext"]
    # unknown context length is allowed but ranked after models known to fit
    assert _choose(_catalog(), "auto-free", prompt_tokens=200000) == ["gamma/free-nocontext"]
    assert _choose(_catalog(), "auto-frontier", prompt_tokens=500000) == ["beta/huge"]
    assert _choose(_catalog(), "auto-free", prompt_tokens=2000, output_tokens=3000) == [
        "gamma/free-big", "gamma/free-nocontext"]


def test_tools_and_vision_requirements() -> None:
    assert _choose(_catalog(), "auto-free", needs_tools=True) == ["gamma/free-big", "gamma/free-nocontext"]
    assert _choose(_catalog(), "auto-balanced", needs_vision=True) == ["alpha/small", "alpha/big"]
    assert _choose(_catalog(), "auto-free", needs_vision=True) == []


def test_fallbacks_spread_over_providers_within_a_tier() -> None:
    models = [
        _model("alpha/a1", "balanced", "0.0000001", "0.0000001"),
        _model("alpha/a2", "balanced", "0.0000002", "0.0000002"),
        _model("beta/b1", "balanced", "0.0000003", "0.0000003"),
    ]
    catalog = Catalog(models, {pid: _provider(pid) for pid in ("alpha", "beta")})
    assert _choose(catalog, "auto-balanced") == ["alpha/a1", "beta/b1", "alpha/a2"]


def test_choice_is_deterministic_regardless_of_catalog_order() -> None:
    providers = {pid: _provider(pid) for pid in ("alpha", "beta", "gamma")}
    forward = Catalog(MODELS, providers)
    backward = Catalog(list(reversed(MODELS)), providers)
    for kind in KINDS:
        assert _choose(forward, kind) == _choose(backward, kind)


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        _choose(_catalog(), "auto-cheap")


def test_no_model_available_is_a_503_with_a_useful_message() -> None:
    with pytest.raises(GatewayError) as info:
        no_model_available("auto-free", needs_tools=True, prompt_tokens=12000)
    error = info.value
    assert error.status == 503 and error.error_type == "temporarily_unavailable"
    assert "auto-free" in error.message and "12,000" in error.message and "tool calling" in error.message
    assert error.response_headers()["retry-after"] == "30"


def test_estimate_prompt_tokens() -> None:
    text = [{"role": "user", "content": "x" * 400}]
    assert estimate_prompt_tokens(text) == 3 + 4 + 100
    image = [{"role": "user", "content": [
        {"type": "text", "text": "x" * 40},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100000}},
    ]}]
    assert estimate_prompt_tokens(image) == 3 + 4 + IMAGE_TOKENS + 10
    calls = [{"role": "assistant", "content": None,
              "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f" * 4, "arguments": "{}" * 2}}]}]
    assert estimate_prompt_tokens(calls) == 3 + 4 + 2
    assert estimate_prompt_tokens(text, tools=[{"type": "function"}]) > estimate_prompt_tokens(text)
    assert wants_vision(image) and not wants_vision(text)


# --- against the real catalog ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Catalog:
    settings = load_settings(env={"OPENAI_API_KEY": "k", "OPENROUTER_API_KEY": "k", "GROQ_API_KEY": "k",
                                  "ANTHROPIC_API_KEY": "k"})
    return build_catalog(settings, resolve_providers(settings))


def test_real_catalog_auto_free_never_paid_and_frontier_never_free(real: Catalog) -> None:
    for tools in (False, True):
        free = choose(real, "auto-free", needs_tools=tools, needs_vision=False, prompt_tokens=500)
        assert free and all(m.free and m.prompt_price == m.completion_price == "0" for m in free)
        frontier = choose(real, "auto-frontier", needs_tools=tools, needs_vision=False, prompt_tokens=500)
        assert frontier and all(not m.free and m.tier == "frontier" for m in frontier)
        balanced = choose(real, "auto-balanced", needs_tools=tools, needs_vision=False, prompt_tokens=500)
        assert balanced and not any(m.free for m in balanced)
    configured = {"openai", "openrouter", "groq", "anthropic"}
    best = choose(real, "auto", needs_tools=True, needs_vision=True, prompt_tokens=50000)
    assert best and {m.provider for m in best} <= configured
    assert all({"tools", "vision"} <= m.capabilities for m in best)


def test_real_catalog_with_nothing_configured_has_no_choice() -> None:
    settings = load_settings(env={})
    catalog = build_catalog(settings, resolve_providers(settings))
    assert all(choose(catalog, k, needs_tools=False, needs_vision=False, prompt_tokens=10) == [] for k in KINDS)
