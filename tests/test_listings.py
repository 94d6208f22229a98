"""Model and provider listings through a running gateway: OpenAI list format, filters, ETag, no secrets."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest

from router.catalog import AUTO_MODELS
from router.health import HealthSnapshot
from tests.harness import GatewayHarness, env_for
from tests.fakes.openai_server import OpenAIFakeState

SECRET = "sk-listing-secret-4f1c9a"


@pytest.fixture
def listing_gateway(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[GatewayHarness]:
    """OpenAI (at the fake) and Groq configured; Groq's key is a secret that must never be shown."""
    _, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test", GROQ_API_KEY=SECRET)
    with GatewayHarness.from_env(env, pools=()) as harness:
        yield harness


def _get(harness: GatewayHarness, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(harness.url + path, timeout=20, **kwargs)  # type: ignore[arg-type]


def test_sdk_parses_models_list(listing_gateway: GatewayHarness) -> None:
    client = openai.OpenAI(base_url=listing_gateway.url + "/v1", api_key="unused", max_retries=0, timeout=20)
    models = list(client.models.list())
    assert len(models) >= 500
    assert {m.object for m in models} == {"model"}
    by_id = {m.id: m for m in models}
    mini = by_id["openai/gpt-4o-mini"]
    assert mini.owned_by == "openai" and isinstance(mini.created, int)
    assert client.models.retrieve("openai/gpt-4o-mini").id == "openai/gpt-4o-mini"


def test_models_shape_and_prices(listing_gateway: GatewayHarness) -> None:
    body = _get(listing_gateway, "/models").json()
    assert body["object"] == "list"
    data = body["data"]
    assert len(data) >= 500 and len({e["provider"] for e in data}) >= 60
    for entry in data:
        assert entry["modality"] == "chat"
        for price in entry["pricing"].values():
            assert isinstance(price, str) and "e" not in price.lower()
            assert Decimal(price) >= 0 or (entry["id"] in AUTO_MODELS and price == "-1")  # a router's "-1"
        assert entry["tier"] in ("free", "balanced", "frontier")
    mini = next(e for e in data if e["id"] == "openai/gpt-4o-mini")
    assert mini["name"] and mini["context_length"] and {"tools", "vision"} <= set(mini["capabilities"])
    assert Decimal(mini["pricing"]["prompt"]) > 0 and mini["free"] is False


def test_embedding_and_transcription_listings(listing_gateway: GatewayHarness) -> None:
    embeddings = _get(listing_gateway, "/v1/embedding-models").json()["data"]
    assert embeddings and all(e["modality"] == "embedding" for e in embeddings)
    assert any(e["id"] == "openai/text-embedding-3-small" for e in embeddings)
    transcription = _get(listing_gateway, "/transcription-models").json()["data"]
    assert transcription and all(e["modality"] == "transcription" for e in transcription)
    whisper = next(e for e in transcription if e["id"] == "openai/whisper-1")
    assert Decimal(whisper["pricing"]["audio_per_hour"]) > 0


def test_filters(listing_gateway: GatewayHarness) -> None:
    groq = _get(listing_gateway, "/models?provider=groq").json()["data"]
    assert groq and {e["provider"] for e in groq} == {"groq"}
    available = _get(listing_gateway, "/models?available=true").json()["data"]
    assert available and {e["provider"] for e in available if e["id"] not in AUTO_MODELS} == {"openai", "groq"}
    free = _get(listing_gateway, "/models?free=true").json()["data"]
    assert free and all(e["free"] for e in free)
    assert all((e["pricing"]["prompt"], e["pricing"]["completion"]) == ("0", "0") for e in free if e["provider"])
    everything = _get(listing_gateway, "/models?modality=all").json()["data"]
    assert {e["modality"] for e in everything} == {"chat", "embedding", "transcription", "completion", "image", "speech", "moderation", "rerank"}
    unknown = _get(listing_gateway, "/models?provider=nope")
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found"
    bad = _get(listing_gateway, "/models?available=maybe")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "available"


def test_available_skips_providers_with_an_open_circuit(listing_gateway: GatewayHarness) -> None:
    app_gateway = listing_gateway.server.config.app.state.gateway  # type: ignore[union-attr]

    listing_gateway.run(app_gateway.pin_health(
        HealthSnapshot(open_circuits=frozenset({"groq"}), error_rates={"groq": 0.9})))
    available = _get(listing_gateway, "/models?available=true").json()["data"]
    assert {e["provider"] for e in available if e["id"] not in AUTO_MODELS} == {"openai"}
    providers = {p["id"]: p for p in _get(listing_gateway, "/providers").json()["data"]}
    assert providers["groq"]["health"] == {"healthy": False, "circuit": "open", "error_rate": 0.9, "latency": None}
    assert providers["openai"]["health"]["healthy"] is True


def test_etag_and_not_modified(listing_gateway: GatewayHarness) -> None:
    first = _get(listing_gateway, "/models")
    etag = first.headers["etag"]
    assert etag and first.headers["cache-control"]
    again = _get(listing_gateway, "/v1/models", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = _get(listing_gateway, "/models?provider=openai", headers={"if-none-match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag
    stale = _get(listing_gateway, "/models", headers={"if-none-match": 'W/"stale"'})
    assert stale.status_code == 200 and stale.content == first.content


def test_gzip_when_asked(listing_gateway: GatewayHarness) -> None:
    with httpx.stream("GET", listing_gateway.url + "/models", headers={"accept-encoding": "gzip"},
                      timeout=20) as raw:
        wire = b"".join(raw.iter_raw())  # the bytes as sent, not decoded
    assert raw.headers["content-encoding"] == "gzip"
    plain = httpx.get(listing_gateway.url + "/models", headers={"accept-encoding": "identity"}, timeout=20)
    assert "content-encoding" not in plain.headers
    assert gzip.decompress(wire) == plain.content
    assert len(wire) < len(plain.content) / 4  # the listing went compressed (JSON shrinks ~10x)


def test_single_model_and_404(listing_gateway: GatewayHarness) -> None:
    entry = _get(listing_gateway, "/models/gpt-4o-mini").json()  # bare id resolves to its default provider
    assert entry["id"] == "openai/gpt-4o-mini" and entry["object"] == "model"
    missing = _get(listing_gateway, "/v1/models/openai/gpt-4o-mnii")
    assert missing.status_code == 404
    body = missing.json()
    assert body["error_type"] == "model_not_found" and "openai/gpt-4o-mini" in body["error"]["message"]


def test_providers_listing_has_no_secrets(listing_gateway: GatewayHarness) -> None:
    response = _get(listing_gateway, "/providers")
    assert SECRET not in response.text and "sk-upstream-test" not in response.text
    providers = {p["id"]: p for p in response.json()["data"]}
    assert len(providers) >= 60
    groq = providers["groq"]
    assert groq["configured"] is True and groq["name"] == "Groq" and "chat" in groq["capabilities"]
    assert groq["health"]["healthy"] is True and groq["models"] > 0
    assert providers["anthropic"]["configured"] is False
    assert not any("key" in field for p in providers.values() for field in p)


def test_cli_models_and_providers(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With a store (here the suite's Redis) health comes from it; without one the catalog still lists."""
    env = env_for(redis_url, OPENAI_API_KEY=SECRET)
    with_store = subprocess.run([sys.executable, "-m", "api.cli.main", "providers", "--json"],
                                env=env, capture_output=True, text=True, timeout=60)
    assert with_store.returncode == 0, with_store.stderr
    openai_entry = next(p for p in json.loads(with_store.stdout)["data"] if p["id"] == "openai")
    assert openai_entry["health"]["healthy"] is True
    env = {k: v for k, v in env.items() if k != "REDIS_URL"}
    env["MEGABRAIN_DATA_DIR"] = str(tmp_path / "no-store")  # nothing runs there, and nothing is started
    models = subprocess.run([sys.executable, "-m", "api.cli.main", "models", "--provider", "openai", "--available"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert models.returncode == 0, models.stderr
    assert "no store is running" in models.stderr
    lines = models.stdout.splitlines()
    assert lines[0].split()[:2] == ["id", "context"]
    assert any(line.startswith("openai/gpt-4o-mini ") for line in lines)
    assert all(line.startswith("openai/") for line in lines[1:])
    speech = subprocess.run([sys.executable, "-m", "api.cli.main", "models", "--modality", "speech"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    tts = next(line for line in speech.stdout.splitlines() if line.startswith("openai/tts-1 "))
    assert "$15/M chars" in tts and "free" not in tts  # priced per character, never shown as free
    providers = subprocess.run([sys.executable, "-m", "api.cli.main", "providers", "--json"],
                               env=env, capture_output=True, text=True, timeout=60)
    assert providers.returncode == 0, providers.stderr
    assert SECRET not in providers.stdout
    assert '"id": "openai"' in providers.stdout and '"configured": true' in providers.stdout
    assert '"health"' not in providers.stdout
