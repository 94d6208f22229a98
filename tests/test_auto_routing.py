"""The auto model ids as a plan (router level, pure) and end to end through a running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest

from common.errors import GatewayError
from common.settings import load_settings
from common.wire import ChatRequest
from router.catalog import Catalog, Model, build_catalog
from router.health import HealthSnapshot
from router.plan import MAX_AUTO_CANDIDATES, plan_for
from router.providers import Provider, resolve_providers
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


# --- router level -------------------------------------------------------------------------------------------


def _provider(pid: str, configured: bool = True) -> Provider:
    return Provider(id=pid, name=pid, kind="openai", base_url="http://x", api_key=None, auth="bearer",
                    capabilities=frozenset({"chat"}), quirks={}, configured=configured)


def _model(mid: str, tier: str, price: str, caps: frozenset[str] = frozenset({"tools"}),
           context: int | None = 128000) -> Model:
    provider, tail = mid.split("/", 1)
    return Model(id=mid, name=tail, provider=provider, upstream_id=tail + "-up", tier=tier, free=tier == "free",
                 prompt_price=price, completion_price=price, capabilities=caps, context_length=context)


def _catalog() -> Catalog:
    models = [
        _model("alpha/top", "frontier", "0.00001", frozenset({"tools", "vision"})),
        _model("beta/top", "frontier", "0.00002"),
        _model("alpha/mid", "balanced", "0.0000001"),
        _model("beta/mid", "balanced", "0.0000002", frozenset()),
        _model("gamma/free", "free", "0", frozenset({"tools"})),
        _model("gamma/free-tiny", "free", "0", frozenset(), context=2048),
        _model("delta/free", "free", "0"),
    ]
    for n in range(8):
        models.append(_model(f"beta/extra{n}", "balanced", f"0.00000{n + 2}"))
    providers = {pid: _provider(pid, pid != "delta") for pid in ("alpha", "beta", "gamma", "delta")}
    return Catalog(models, providers)


def _plan(model: str, **kwargs: object) -> list[str]:
    kwargs.setdefault("messages", MESSAGES)
    return [route.model for route in plan_for(_catalog(), model, **kwargs)]  # type: ignore[arg-type]


def test_auto_free_plan_is_free_models_of_configured_providers() -> None:
    assert _plan("auto-free") == ["gamma/free", "gamma/free-tiny"]  # delta is not configured
    routes = plan_for(_catalog(), "auto-free", messages=MESSAGES)
    assert routes[0].upstream_model == "free-up" and routes[0].provider == "gamma"


def test_auto_free_drops_paid_models_from_the_clients_fallback_list() -> None:
    assert _plan("auto-free", extra_models=["alpha/mid", "gamma/free-tiny"]) == ["gamma/free", "gamma/free-tiny"]
    assert _plan("auto-balanced", extra_models=["gamma/free"])[-1] == "gamma/free"  # the client asked for it


def test_auto_frontier_and_balanced_never_free_and_capped() -> None:
    assert _plan("auto-frontier") == ["alpha/top", "beta/top"]
    balanced = _plan("auto-balanced")
    assert len(balanced) == MAX_AUTO_CANDIDATES
    assert balanced[:2] == ["alpha/mid", "beta/extra0"]  # tool-capable and cheapest, providers spread
    assert not any(mid.startswith("gamma/") for mid in balanced)


def test_request_needs_filter_the_plan() -> None:
    assert _plan("auto-free", tools=TOOLS) == ["gamma/free"]
    long_prompt = [{"role": "user", "content": "x" * 8000}]  # ~2000 tokens + answer margin > 2048
    assert _plan("auto-free", messages=long_prompt) == ["gamma/free"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert _plan("auto", messages=image) == ["alpha/top"]
    with pytest.raises(GatewayError) as info:
        _plan("auto-free", messages=image)
    assert info.value.status == 503 and "image input" in info.value.message


def test_msgspec_structs_from_the_web_tier_are_understood() -> None:
    chat = msgspec.json.decode(msgspec.json.encode({"model": "auto-free", "messages": MESSAGES, "tools": TOOLS}),
                               type=ChatRequest)
    assert _plan("auto-free", messages=chat.messages, tools=chat.tools) == ["gamma/free"]


def test_open_circuits_and_error_rates() -> None:
    snapshot = HealthSnapshot(open_circuits=frozenset({"alpha"}))
    assert _plan("auto-frontier", health=snapshot) == ["beta/top"]
    assert _plan("auto-frontier", healthy=snapshot.healthy) == ["beta/top"]  # the web tier's current call
    assert _plan("auto-frontier", healthy=lambda p, m: p != "beta") == ["alpha/top"]
    flaky = HealthSnapshot(error_rates={"alpha": 0.3})
    assert _plan("auto-frontier", health=flaky) == ["beta/top", "alpha/top"]  # ranked lower, not dropped
    model_down = HealthSnapshot(open_circuits=frozenset({"gamma|gamma/free"}))
    assert _plan("auto-free", health=model_down) == ["gamma/free-tiny"]
    with pytest.raises(GatewayError) as info:
        _plan("auto-free", health=HealthSnapshot(open_circuits=frozenset({"gamma"})))
    assert info.value.error_type == "temporarily_unavailable"


def test_half_open_trial_is_not_used_up_by_ranking() -> None:
    snapshot = HealthSnapshot(half_open=frozenset({"alpha"}))
    plan_for(_catalog(), "auto", health=snapshot, messages=MESSAGES)
    assert snapshot.healthy("alpha", "alpha/top")  # the trial is still there for the request that gets it


def test_auto_ids_are_chat_only_and_plain_ids_unchanged() -> None:
    with pytest.raises(GatewayError) as info:
        plan_for(_catalog(), "auto", modality="embedding")
    assert info.value.status == 400
    assert _plan("alpha/top") == ["alpha/top", "beta/top"]  # the same model at its other provider
    assert plan_for(_catalog(), "auto-free")  # messages are optional


def test_real_catalog_auto_free_without_free_providers_is_503() -> None:
    settings = load_settings(env={"OPENAI_API_KEY": "k"})
    catalog = build_catalog(settings, resolve_providers(settings))
    with pytest.raises(GatewayError) as info:
        plan_for(catalog, "auto-free", messages=MESSAGES)
    assert info.value.status == 503 and "free = true" in info.value.message
    frontier = [catalog.get(r.model) for r in plan_for(catalog, "auto-frontier", messages=MESSAGES)]
    assert frontier and all(m is not None and m.provider == "openai" and not m.free for m in frontier)


# --- end to end ---------------------------------------------------------------------------------------------

CONFIG = """
[providers.local]
kind = "openai"
base_url = "{upstream}"

[providers.local2]
kind = "openai"
base_url = "{upstream}"

[[models]]
id = "local/tiny"
provider = "local"
upstream_id = "tiny"
free = true
context_length = 8192
pricing = {{ prompt = "0", completion = "0" }}

[[models]]
id = "local2/tiny2"
provider = "local2"
upstream_id = "tiny2"
free = true
context_length = 8192
pricing = {{ prompt = "0", completion = "0" }}
"""


@pytest.fixture
def auto_gateway(gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str],
                 tmp_path: Path) -> Iterator[GatewayHarness]:
    """OpenAI (paid models) and two config-file providers with one free model each, all at the fake."""
    _, upstream = fake_openai
    config = tmp_path / "megabrain.toml"
    config.write_text(CONFIG.format(upstream=upstream))
    env = {**gateway_env, "MEGABRAIN_CONFIG": str(config)}
    with GatewayHarness.from_env(env, pools=("openai", "local", "local2")) as harness:
        yield harness


def _client(harness: GatewayHarness, env: dict[str, str] | None = None) -> openai.OpenAI:
    key = (env or {}).get("MEGABRAIN_TEST_API_KEY") or "unused"
    return openai.OpenAI(base_url=harness.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _pin_health(harness: GatewayHarness, snapshot: HealthSnapshot) -> None:
    """Swap in a health snapshot and stop the refresh loop from replacing it during the test."""
    gateway = harness.server.config.app.state.gateway  # type: ignore[union-attr]

    harness.run(gateway.pin_health(snapshot))


def _anonymous(harness: GatewayHarness, model: str) -> httpx.Response:
    """A request without any Authorization header (the SDK always sends one)."""
    return httpx.post(harness.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                      timeout=20)


def test_auto_free_answers_from_the_configured_free_model(auto_gateway: GatewayHarness, gateway_env: dict[str, str],
                                                          fake_openai: tuple[OpenAIFakeState, str]) -> None:
    response = _anonymous(auto_gateway, "auto-free")  # free models need no key
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "local/tiny"
    assert response.headers["x-megabrain-provider"] == "local"
    state, _ = fake_openai
    assert state.requests[-1]["body"]["model"] == "tiny"
    chunks = list(_client(auto_gateway, gateway_env).chat.completions.create(model="auto-free", messages=MESSAGES,
                                                                               stream=True))
    assert chunks and {c.model for c in chunks} == {"local/tiny"}


def test_auto_free_skips_a_provider_whose_circuit_is_open(auto_gateway: GatewayHarness,
                                                          fake_openai: tuple[OpenAIFakeState, str]) -> None:
    _pin_health(auto_gateway, HealthSnapshot(open_circuits=frozenset({"local"})))
    response = _anonymous(auto_gateway, "auto-free")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "local2/tiny2"
    state, _ = fake_openai
    assert state.requests[-1]["body"]["model"] == "tiny2"
    _pin_health(auto_gateway, HealthSnapshot(open_circuits=frozenset({"local", "local2"})))
    down = _anonymous(auto_gateway, "auto-free")
    assert down.status_code == 503 and down.json()["error_type"] == "temporarily_unavailable"
    assert down.headers["retry-after"]


def test_auto_frontier_never_picks_a_free_model(auto_gateway: GatewayHarness, gateway_env: dict[str, str]) -> None:
    catalog = auto_gateway.server.config.app.state.gateway.catalog  # type: ignore[union-attr]
    anonymous = _anonymous(auto_gateway, "auto-frontier")  # a paid model: no key, no answer
    assert anonymous.status_code == 401 and anonymous.json()["error_type"] == "paid_model_auth_required"
    completion = _client(auto_gateway, gateway_env).chat.completions.create(model="auto-frontier", messages=MESSAGES)
    chosen = catalog.get(completion.model)
    assert chosen is not None and chosen.provider == "openai" and not chosen.free and chosen.tier == "frontier"
