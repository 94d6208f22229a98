"""Listings a client can trust, read with the official SDKs: every entry priced (the auto ids as
OpenRouter lists its router), a canonical id described by an endpoint this deployment serves, no model
listed twice, and the Anthropic SDK's ``models.list()`` answered in Anthropic's own list shape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from router.catalog import AUTO_MODELS
from tests.harness import GatewayHarness, env_for

LLAMA = "meta-llama/llama-3.3-70b-instruct"
CONFIGURED = {"openai", "groq", "deepinfra", "together"}


@pytest.fixture(scope="module")
def listing(redis_url: str) -> Iterator[GatewayHarness]:
    """OpenAI, Groq, DeepInfra and Together configured; no local server (vLLM, LM Studio…) is."""
    env = env_for(redis_url, OPENAI_API_KEY="sk-a", GROQ_API_KEY="gsk-b", DEEPINFRA_API_KEY="di-c",
                  TOGETHER_API_KEY="tg-d")
    with GatewayHarness.from_env(env, pools=()) as harness:
        yield harness


@pytest.fixture(scope="module")
def openai_models(listing: GatewayHarness) -> list[openai.types.Model]:
    client = openai.OpenAI(base_url=listing.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    return list(client.models.list())


def test_every_entry_has_a_prompt_and_completion_price(openai_models: list[openai.types.Model]) -> None:
    for model in openai_models:
        pricing = model.model_extra["pricing"]
        assert set(pricing) >= {"prompt", "completion"}, model.id
        for price in (pricing["prompt"], pricing["completion"]):
            assert isinstance(price, str) and Decimal(price) >= (-1 if model.id in AUTO_MODELS else 0), model.id
    auto = {m.id: m.model_extra["pricing"] for m in openai_models if m.id in AUTO_MODELS}
    assert auto["auto"] == {"prompt": "-1", "completion": "-1"}  # a router: the chosen model's price applies
    assert auto["auto-free"] == {"prompt": "0", "completion": "0"}  # never a paid model


def test_canonical_entry_describes_a_served_endpoint(listing: GatewayHarness,
                                                     openai_models: list[openai.types.Model]) -> None:
    entry = next(m.model_extra for m in openai_models if m.id == LLAMA)
    assert entry["provider"] in CONFIGURED and entry["free"] is False
    assert Decimal(entry["pricing"]["prompt"]) > 0
    served = httpx.get(f"{listing.url}/v1/models/{LLAMA}/endpoints", timeout=20).json()["data"]
    configured = [e for e in served["endpoints"] if e["configured"]]
    cheapest = min(configured, key=lambda e: Decimal(e["pricing"]["prompt"]) + Decimal(e["pricing"]["completion"]))
    assert entry["pricing"] == cheapest["pricing"] and entry["provider"] == cheapest["tag"]
    assert served["provider"] == entry["provider"] and served["pricing"] == entry["pricing"]
    single = httpx.get(f"{listing.url}/v1/models/{LLAMA}", timeout=20).json()
    assert single["provider"] == entry["provider"] and single["free"] is False
    # what the listing says matches what a request meets: an anonymous call is refused as paid
    refused = httpx.post(f"{listing.url}/v1/chat/completions", timeout=20,
                         json={"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401 and refused.json()["error_type"] == "paid_model_auth_required"


def test_no_model_listed_twice(openai_models: list[openai.types.Model]) -> None:
    counts = Counter(m.id.lower() for m in openai_models)
    assert [name for name, n in counts.items() if n > 1] == []


def test_openai_shape_without_anthropic_version(listing: GatewayHarness) -> None:
    body = httpx.get(listing.url + "/v1/models?limit=2", timeout=20).json()
    assert body["object"] == "list" and len(body["data"]) > 100


# ------------------------------------------------------------------------------ Anthropic's list shape


@pytest.fixture(scope="module")
def claude(listing: GatewayHarness) -> "anthropic.Anthropic":
    return anthropic.Anthropic(base_url=listing.url, api_key="unused", max_retries=0, timeout=30)


def test_anthropic_sdk_lists_in_anthropics_shape(listing: GatewayHarness, claude: "anthropic.Anthropic",
                                                 openai_models: list[openai.types.Model]) -> None:
    page = claude.models.list(limit=5)
    assert len(page.data) == 5 and page.has_more is True
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    for model in page.data:
        assert model.type == "model" and model.display_name and model.created_at.year >= 1970
        assert model.lifecycle in ("active", "deprecated")
    second = page.get_next_page()
    assert [m.id for m in second.data][:1] != [page.last_id] and len(second.data) == 5
    assert not {m.id for m in page.data} & {m.id for m in second.data}
    back = claude.models.list(limit=5, before_id=second.first_id)
    assert [m.id for m in back.data] == [m.id for m in page.data]
    everything = [m.id for m in claude.models.list(limit=1000)]  # auto-pagination follows after_id
    assert sorted(everything) == sorted(m.id for m in openai_models)
    newest_first = [m.created_at for m in claude.models.list(limit=50).data]
    assert newest_first == sorted(newest_first, reverse=True)
    raw = httpx.get(listing.url + "/v1/models", headers={"anthropic-version": "2023-06-01"}, timeout=20)
    assert len(raw.json()["data"]) == 20 and len(raw.content) < 20_000  # Anthropic's default page, not megabytes


def test_anthropic_sdk_retrieves_one_model(claude: "anthropic.Anthropic") -> None:
    model = claude.models.retrieve("openai/gpt-4o-mini")
    assert model.id == "openai/gpt-4o-mini" and model.type == "model" and model.display_name
    assert model.max_input_tokens and model.max_tokens
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.models.retrieve("nobody/nothing-here")
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "after_id=nobody/nothing",
                                   "after_id=auto&before_id=auto"])
def test_anthropic_list_refusals_in_anthropics_shape(listing: GatewayHarness, query: str) -> None:
    response = httpx.get(f"{listing.url}/v1/models?{query}", headers={"anthropic-version": "2023-06-01"}, timeout=20)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
