"""One model, two providers, end to end, as a new OpenRouter user meets it: the OpenAI SDK pointed at
``…/api/v1``, ``model="meta-llama/llama-3.3-70b-instruct"``, two fakes standing in for Groq and Cerebras.

The prices of the two endpoints are set in the config file so which one is cheaper is known; Groq's
speculative-decoding copy is hidden so the model has exactly these two endpoints.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from api.access.keys import KeyStore
from common.names import Names
from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, auth, env_for, wait_until

LLAMA = "meta-llama/llama-3.3-70b-instruct"
GROQ_ID, CEREBRAS_ID = "llama-3.3-70b-versatile", "llama-3.3-70b"
MESSAGES = [{"role": "user", "content": "Hello"}]

CONFIG = f"""
[[models]]
id = "groq/{GROQ_ID}"
pricing = {{ prompt = "0.0000001", completion = "0.0000002" }}

[[models]]
id = "cerebras/{CEREBRAS_ID}"
pricing = {{ prompt = "0.000001", completion = "0.000002" }}

[[models]]
id = "groq/llama-3.3-70b-specdec"
hidden = true
"""

Fakes = tuple[OpenAIFakeState, OpenAIFakeState]
ADMIN_KEY = "admin-endpoints-test-" + "e" * 32


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Fakes, tuple[str, str]]]:
    groq, cerebras = OpenAIFakeState(retry_after=0), OpenAIFakeState(retry_after=0)
    with ThreadedServer(create_openai_app(groq)) as a, ThreadedServer(create_openai_app(cerebras)) as b:
        yield (groq, cerebras), (a.url + "/v1", b.url + "/v1")


@pytest.fixture
def fakes(servers: tuple[Fakes, tuple[str, str]]) -> Fakes:
    for state in servers[0]:
        state.__dict__.update({k: v for k, v in vars(OpenAIFakeState(retry_after=0)).items() if k != "_lock"})
    return servers[0]


def _keys(redis_url: str, namespace: str) -> tuple[str, str]:
    async def create() -> tuple[str, str]:
        redis = connect(redis_url)
        try:
            store = KeyStore(redis, Names(namespace))
            return (await store.create("alice"))[1], (await store.create("bob", rpm=60, monthly_budget=5.0))[1]
        finally:
            await redis.aclose()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
            servers: tuple[Fakes, tuple[str, str]]) -> Iterator[tuple[GatewayHarness, str, str]]:
    config = tmp_path_factory.mktemp("endpoints") / "megabrain.toml"
    config.write_text(CONFIG)
    groq_url, cerebras_url = servers[1]
    env = env_for(redis_url, GROQ_BASE_URL=groq_url, GROQ_API_KEY="sk-groq", CEREBRAS_BASE_URL=cerebras_url,
                  CEREBRAS_API_KEY="sk-cerebras", MEGABRAIN_CONFIG=str(config),
                  MEGABRAIN_MOUNT_PREFIX="/gw", MEGABRAIN_ADMIN_KEY=ADMIN_KEY)
    alice, bob = _keys(redis_url, env["MEGABRAIN_NAMESPACE"])
    with GatewayHarness.from_env(env, pools=("groq", "cerebras")) as harness:
        yield harness, alice, bob


def _sdk(gateway: tuple[GatewayHarness, str, str], key: str | None = None, base: str = "/api/v1") -> openai.OpenAI:
    harness, alice, _ = gateway
    return openai.OpenAI(base_url=harness.url + base, api_key=key or alice, max_retries=0, timeout=20)


def _served_by(raw: Any) -> str:
    completion = raw.parse()
    assert raw.headers["x-megabrain-provider"] == completion.provider  # type: ignore[attr-defined]
    return raw.headers["x-megabrain-provider"]


def _create(client: openai.OpenAI, model: str = LLAMA, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES,
                                                             extra_body=extra or None)


def test_the_canonical_id_answers_from_the_cheaper_provider(gateway: tuple[GatewayHarness, str, str],
                                                            fakes: Fakes) -> None:
    raw = _create(_sdk(gateway))
    assert _served_by(raw) == "groq"
    assert fakes[0].requests[-1]["body"]["model"] == GROQ_ID and not fakes[1].requests
    assert "provider" not in fakes[0].requests[-1]["body"]  # our routing fields never reach the upstream


def test_order_only_and_ignore_decide_who_serves(gateway: tuple[GatewayHarness, str, str], fakes: Fakes) -> None:
    client = _sdk(gateway)
    assert _served_by(_create(client, provider={"order": ["cerebras", "groq"]})) == "cerebras"
    assert fakes[1].requests[-1]["body"]["model"] == CEREBRAS_ID
    assert _served_by(_create(client, provider={"only": ["Cerebras"]})) == "cerebras"  # display names work
    assert _served_by(_create(client, provider={"ignore": ["groq"]})) == "cerebras"
    assert _served_by(_create(client, provider={"order": ["groq"]})) == "groq"


def test_floor_picks_the_cheapest_and_free_finds_none(gateway: tuple[GatewayHarness, str, str],
                                                      fakes: Fakes) -> None:
    client = _sdk(gateway)
    assert _served_by(_create(client, model=LLAMA + ":floor")) == "groq"
    with pytest.raises(openai.NotFoundError) as info:
        _create(client, model=LLAMA + ":free")
    assert info.value.body["param"] == "model" and "':free'" in info.value.body["message"]  # type: ignore[index]


def test_preferences_are_validated_and_never_silently_ignored(gateway: tuple[GatewayHarness, str, str]) -> None:
    client = _sdk(gateway)
    with pytest.raises(openai.BadRequestError) as bad:
        _create(client, provider="bogus")
    assert bad.value.body["param"] == "provider"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        _create(client, provider={"sort": "fastest"})
    assert bad.value.body["param"] == "provider.sort"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        _create(client, provider={"prefer": ["groq"]})
    assert "prefer" in bad.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as empty:
        _create(client, provider={"only": ["anthropic"]})
    assert empty.value.body["param"] == "provider.only"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as empty:
        _create(client, provider={"max_price": {"prompt": 0.01}})
    assert empty.value.body["param"] == "provider.max_price"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as online:
        _create(client, model=LLAMA + ":online")
    assert "':online'" in online.value.body["message"]  # type: ignore[index]


def test_models_alone_uses_the_list(gateway: tuple[GatewayHarness, str, str], fakes: Fakes) -> None:
    response = httpx.post(gateway[0].url + "/api/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {gateway[1]}"},
                          json={"models": ["nobody/unknown-model", f"cerebras/{CEREBRAS_ID}"], "messages": MESSAGES})
    assert response.status_code == 404  # the first model is the one asked for: its 404 is the answer
    assert response.json()["error_type"] == "model_not_found" and response.json()["error"]["param"] == "model"
    assert "nobody/unknown-model" in response.json()["error"]["message"]
    response = httpx.post(gateway[0].url + "/api/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {gateway[1]}"},
                          json={"models": [f"cerebras/{CEREBRAS_ID}", LLAMA], "messages": MESSAGES})
    assert response.status_code == 200 and response.json()["provider"] == "cerebras"


def _generation(gateway: tuple[GatewayHarness, str, str], answer_id: str, key: str) -> httpx.Response:
    # the record is written with the answer (common/settlement.py): there when the client has the answer
    return httpx.get(gateway[0].url + "/api/v1/generation", params={"id": answer_id}, headers=auth(key),
                     timeout=10)


def test_generation_lookup_shows_provider_and_cost_to_its_own_key(gateway: tuple[GatewayHarness, str, str],
                                                                  fakes: Fakes) -> None:
    _, alice, bob = gateway
    completion = _sdk(gateway).chat.completions.create(model=LLAMA, messages=MESSAGES,
                                                       extra_body={"provider": {"order": ["cerebras"]}})
    record = _generation(gateway, completion.id, alice)
    assert record.status_code == 200, record.text
    data = record.json()["data"]
    assert (data["provider_name"], data["model"], data["endpoint"]) == ("cerebras", LLAMA, f"cerebras/{CEREBRAS_ID}")
    usage = completion.usage
    assert usage is not None
    assert (data["tokens_prompt"], data["tokens_completion"]) == (usage.prompt_tokens, usage.completion_tokens)
    expected = usage.prompt_tokens * 0.000001 + usage.completion_tokens * 0.000002
    assert data["total_cost"] == pytest.approx(expected) and data["total_cost"] > 0
    assert data["finish_reason"] == "stop" and data["latency"] >= 0
    other = httpx.get(gateway[0].url + "/api/v1/generation", params={"id": completion.id},
                      headers={"authorization": f"Bearer {bob}"}, timeout=10)
    assert other.status_code == 404  # another key cannot read it, nor learn that it exists
    anonymous = httpx.get(gateway[0].url + "/api/v1/generation", params={"id": completion.id}, timeout=10)
    assert anonymous.status_code == 401


def _key_data(gateway: tuple[GatewayHarness, str, str], key: str) -> dict[str, Any]:
    response = httpx.get(gateway[0].url + "/api/v1/key", headers=auth(key), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_key_lookup_in_openrouter_shape(gateway: tuple[GatewayHarness, str, str]) -> None:
    """``usage`` is this month's spend in USD: the costs of the key's answers, to the digit."""
    _, _, bob = gateway
    data = _key_data(gateway, bob)
    assert data["label"] == "bob" and data["limit"] == 5.0 and data["is_free_tier"] is False
    assert data["rate_limit"] == {"requests": 60, "interval": "1m"}
    assert (data["usage"], data["limit_remaining"]) == (0, 5.0)  # bob has made no request yet
    costs = []
    for provider in ("groq", "cerebras"):
        raw = _create(_sdk(gateway, key=bob), provider={"order": [provider]})
        costs.append(Decimal(raw.headers["x-megabrain-cost"]))
    spend = sum(costs, Decimal(0))
    assert spend > 0
    assert wait_until(lambda: _key_data(gateway, bob)["usage"] != 0, 10, 0.05)  # the worker's batched write
    data = _key_data(gateway, bob)
    assert Decimal(str(data["usage"])) == spend and data["usage_monthly"] == data["usage"]
    assert Decimal(str(data["limit_remaining"])) == Decimal("5") - spend


def test_key_lookup_of_a_free_tier_key(gateway: tuple[GatewayHarness, str, str]) -> None:
    """A budget of 0 is the free tier: ``limit`` 0, ``is_free_tier`` true, no rate limit unless set."""
    created = httpx.post(gateway[0].url + "/admin/keys", json={"name": "carol", "monthly_budget": 0},
                         headers=auth(ADMIN_KEY), timeout=10)
    assert created.status_code == 201, created.text
    data = _key_data(gateway, created.json()["key"])
    assert (data["label"], data["limit"], data["is_free_tier"], data["usage"]) == ("carol", 0.0, True, 0)
    assert data["rate_limit"] is None and data["limit_remaining"] == 0.0


def test_every_path_is_served_bare_v1_api_v1_and_under_the_prefix(gateway: tuple[GatewayHarness, str, str]) -> None:
    harness = gateway[0]
    entries = {base: httpx.get(harness.url + base + "/models/auto-free", timeout=10)
               for base in ("", "/v1", "/api/v1", "/gw", "/gw/v1", "/gw/api/v1")}
    assert {base: r.status_code for base, r in entries.items()} == dict.fromkeys(entries, 200)
    assert all(r.json()["id"] == "auto-free" and r.json() == entries[""].json() for r in entries.values())
    assert _served_by(_create(_sdk(gateway, base="/gw/api/v1"))) == "groq"


def test_the_cli_finds_a_server_that_runs_with_a_mount_prefix(gateway: tuple[GatewayHarness, str, str]) -> None:
    harness = gateway[0]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MEGABRAIN_ADMIN_KEY=ADMIN_KEY, MEGABRAIN_CONFIG=os.devnull)
    for url in (harness.url, harness.url + "/gw"):
        listed = subprocess.run([sys.executable, "-m", "api.cli.main", "keys", "list", "--url", url], env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "alice" in listed.stdout and "bob" in listed.stdout
        status = subprocess.run([sys.executable, "-m", "api.cli.main", "status", "--url", url], env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "redis: ok" in status.stdout, status.stdout + status.stderr


def test_endpoints_listing_and_canonical_entry(gateway: tuple[GatewayHarness, str, str]) -> None:
    harness = gateway[0]
    listed = httpx.get(harness.url + f"/api/v1/models/{LLAMA}/endpoints", timeout=10).json()["data"]
    assert listed["id"] == LLAMA and listed["canonical_slug"] == LLAMA
    tags = [e["tag"] for e in listed["endpoints"]]
    assert {"groq", "cerebras", "together", "deepinfra"} <= set(tags)
    groq = next(e for e in listed["endpoints"] if e["tag"] == "groq")
    assert groq["configured"] is True and groq["pricing"]["prompt"] == "0.0000001"
    assert {"uptime_last_30m", "latency_last_30m", "context_length", "max_completion_tokens"} <= set(groq)
    entry = _sdk(gateway).models.retrieve(LLAMA)
    assert entry.id == LLAMA
    models = httpx.get(harness.url + "/api/v1/models", timeout=10).json()["data"]
    assert LLAMA in {m["id"] for m in models} and "auto" in {m["id"] for m in models}
    assert not any(m["id"].endswith(("/davinci-002", "/babbage-002")) for m in models)


def test_a_failing_provider_falls_over_unless_fallbacks_are_off(gateway: tuple[GatewayHarness, str, str],
                                                               fakes: Fakes) -> None:
    """Last in this module: the failures count towards Groq's circuit."""
    client = _sdk(gateway)
    fakes[0].failures = [503] * 3  # the first attempt and both retries
    assert _served_by(_create(client)) == "cerebras"
    assert len(fakes[0].requests) == 3 and len(fakes[1].requests) == 1
    fakes[0].failures = [503] * 3
    with pytest.raises(openai.APIStatusError) as info:
        _create(client, provider={"allow_fallbacks": False})
    assert info.value.status_code == 503
    assert len(fakes[0].requests) == 6 and len(fakes[1].requests) == 1  # cerebras never tried


def test_endpoints_report_live_health_of_the_last_minute(redis_url: str, tmp_path_factory: pytest.TempPathFactory,
                                                         servers: tuple[Fakes, tuple[str, str]],
                                                         fakes: Fakes) -> None:
    """``uptime`` is the share of answered calls, ``latency`` their mean in ms, over the last minute (README,
    "Providers"; the field names are OpenRouter's): four calls answered by Groq, one failed, on a gateway of
    its own so no other test's calls are in the window."""
    config = tmp_path_factory.mktemp("health") / "megabrain.toml"
    config.write_text(CONFIG)
    groq_url, cerebras_url = servers[1]
    env = env_for(redis_url, GROQ_BASE_URL=groq_url, GROQ_API_KEY="sk-groq", CEREBRAS_BASE_URL=cerebras_url,
                  CEREBRAS_API_KEY="sk-cerebras", MEGABRAIN_CONFIG=str(config))
    alice, _ = _keys(redis_url, env["MEGABRAIN_NAMESPACE"])
    groq, _ = fakes
    groq.latency = 0.2  # every answered call takes at least this long
    with GatewayHarness.from_env(env, pools=("groq",)) as harness:
        client = openai.OpenAI(base_url=harness.url + "/api/v1", api_key=alice, max_retries=0, timeout=20)

        def endpoints() -> dict[str, dict[str, Any]]:
            listed = httpx.get(harness.url + f"/api/v1/models/{LLAMA}/endpoints", timeout=10).json()["data"]
            return {e["tag"]: e for e in listed["endpoints"]}

        assert endpoints()["groq"]["uptime_last_30m"] is None  # nothing measured yet
        for _ in range(3):
            client.chat.completions.create(model=f"groq/{GROQ_ID}", messages=MESSAGES)
        groq.failures = [503]  # retried in place: one failed call, then a fourth answered one
        client.chat.completions.create(model=f"groq/{GROQ_ID}", messages=MESSAGES)
        assert len(groq.requests) == 5
        # the web tier reads health back every couple of seconds
        assert wait_until(lambda: endpoints()["groq"]["uptime_last_30m"] is not None, 10, 0.1)
        listed = endpoints()
    entry = listed["groq"]
    assert entry["uptime_last_30m"] == 80.0  # 4 of 5 calls answered
    assert entry["latency_last_30m"] >= 200  # the mean of the answered calls, in ms
    assert entry["health_window_seconds"] == 60 and entry["circuit"] == "closed" and entry["status"] == 0
    assert listed["cerebras"]["uptime_last_30m"] is None and listed["cerebras"]["latency_last_30m"] is None
