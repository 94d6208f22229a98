"""Embeddings end to end: the OpenAI SDK (base64 by default) and plain HTTP through the queue to fake upstreams."""

from __future__ import annotations

from pathlib import Path

import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.gemini_server import GeminiFakeState, create_gemini_app
from tests.fakes.openai_server import OpenAIFakeState, embedding_vector
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, auth, env_for, sdk_for, with_test_key


def float32(values: list[float]) -> list[float]:
    """What a value becomes after a trip through little-endian float32 (the base64 encoding)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def test_default_base64_single(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hello world")
    result = raw.parse()
    assert result.data[0].embedding == embedding_vector("hello world", 8)
    assert result.model == "openai/text-embedding-3-small"
    assert raw.headers["x-megabrain-provider"] == "openai"
    body = raw.http_response.json()
    assert isinstance(body["data"][0]["embedding"], str)  # the SDK asked for base64 and got it
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 2
    assert body["usage"]["cost"] == 0.00000004  # 2 tokens at $0.02 per million
    state, _ = fake_openai
    sent = state.requests[-1]["body"]
    assert sent["model"] == "text-embedding-3-small"
    assert sent["encoding_format"] == "base64"  # OpenAI does base64 itself: passed through


def test_float_batch(client: openai.OpenAI) -> None:
    texts = ["alpha", "beta gamma", "delta epsilon zeta"]
    result = client.embeddings.create(model="openai/text-embedding-3-small", input=texts, encoding_format="float")
    assert [d.index for d in result.data] == [0, 1, 2]
    assert [d.embedding for d in result.data] == [embedding_vector(t, 8) for t in texts]
    assert result.usage.prompt_tokens == sum(max(1, len(t) // 4) for t in texts)


def test_token_arrays_and_dimensions(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], dimensions=4)
    assert [d.embedding for d in result.data] == [embedding_vector("1,2,3", 4), embedding_vector("4,5", 4)]
    single = client.embeddings.create(model="text-embedding-3-small", input=[7, 8, 9], encoding_format="float")
    assert single.data[0].embedding == embedding_vector("7,8,9", 8)


def test_curl_style_defaults_to_float(gateway: GatewayHarness, gateway_env: dict[str, str]) -> None:
    response = httpx.post(gateway.url + "/embeddings", json={"model": "text-embedding-3-small", "input": "hi"},
                          headers=auth(gateway_env), timeout=20)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert body["data"][0]["embedding"] == embedding_vector("hi", 8)


def test_large_batch_base64(client: openai.OpenAI) -> None:
    """Big enough to be converted off the event loop; every vector still lands at its index."""
    texts = [f"text number {i}" for i in range(300)]
    result = client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=64)
    assert len(result.data) == 300
    for i in (0, 137, 299):
        assert result.data[i].embedding == embedding_vector(texts[i], 64)


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": "text-embedding-3-small", "input": ""}, "input"),
        ({"model": "text-embedding-3-small", "input": ["ok", ""]}, "input"),
        ({"model": "text-embedding-3-small", "input": []}, "input"),
        ({"model": "text-embedding-3-small", "input": ["a", [1, 2]]}, "input"),
        ({"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "text-embedding-3-small", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "gpt-4o-mini", "input": "x"}, "model"),
    ],
)
def test_invalid_requests(gateway: GatewayHarness, gateway_env: dict[str, str],
                          fake_openai: tuple[OpenAIFakeState, str], payload: dict, param: str) -> None:
    response = httpx.post(gateway.url + "/v1/embeddings", json=payload, headers=auth(gateway_env), timeout=20)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []


def test_batch_over_the_limit(client: openai.OpenAI, gateway: GatewayHarness,
                              fake_openai: tuple[OpenAIFakeState, str]) -> None:
    limit = gateway.settings.limits.max_embedding_inputs
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * (limit + 1))
    body = err.value.response.json()
    assert body["error"]["param"] == "input"
    assert str(limit) in body["error"]["message"]
    assert fake_openai[0].requests == []


def test_upstream_error_is_retried(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [500]
    state.retry_after = 0
    result = client.embeddings.create(model="text-embedding-3-small", input="again")
    assert result.data[0].embedding == embedding_vector("again", 8)
    assert len(state.requests) == 2


@pytest.fixture
def float_only_gateway(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                       tmp_path: Path) -> Iterator[tuple[GatewayHarness, dict[str, str]]]:
    """Together (an OpenAI-compatible provider not known to honour base64) served by the same fake; its
    unlisted ids are allowed at a configured price."""
    _, upstream = fake_openai
    config = tmp_path / "megabrain.toml"
    config.write_text('[[models]]\nid = "together/*"\nmodality = "embedding"\n'
                      'pricing = { prompt = "0.00000001", completion = "0" }\n')
    env = with_test_key(env_for(redis_url, TOGETHER_BASE_URL=upstream, TOGETHER_API_KEY="sk-together",
                                MEGABRAIN_CONFIG=str(config)))
    with GatewayHarness.from_env(env, pools=("together",)) as harness:
        yield harness, env


def test_float_only_upstream_still_answers_base64(float_only_gateway: tuple[GatewayHarness, dict[str, str]],
                                                  fake_openai: tuple[OpenAIFakeState, str]) -> None:
    client = sdk_for(float_only_gateway[0].url, float_only_gateway[1])
    raw = client.embeddings.with_raw_response.create(model="together/some-embedder", input=["one", "two"])
    result = raw.parse()
    assert [d.embedding for d in result.data] == [embedding_vector("one", 8), embedding_vector("two", 8)]
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    sent = fake_openai[0].requests[-1]["body"]
    assert sent["encoding_format"] == "float" and sent["model"] == "some-embedder"


@pytest.fixture
def gemini_gateway(redis_url: str) -> Iterator[tuple[GeminiFakeState, GatewayHarness, dict[str, str]]]:
    state = GeminiFakeState()
    with ThreadedServer(create_gemini_app(state)) as server:
        env = with_test_key(env_for(redis_url, GEMINI_BASE_URL=server.url, GEMINI_API_KEY=state.api_key))
        with GatewayHarness.from_env(env, pools=("google",)) as harness:
            yield state, harness, env


def gemini_values(text: str, n: int, size: int = 8) -> list[float]:
    """What the fake Gemini server computes for the n-th text of a batch."""
    return [round((len(text) + n + k) / 100, 4) for k in range(size)]


def test_gemini_embeddings(gemini_gateway: tuple[GeminiFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = gemini_gateway
    client = sdk_for(harness.url, env)
    texts = ["first text", "second"]
    as_base64 = client.embeddings.create(model="google/gemini-embedding-001", input=texts)
    assert [d.embedding for d in as_base64.data] == [float32(gemini_values(t, n)) for n, t in enumerate(texts)]
    raw = client.embeddings.with_raw_response.create(model="google/gemini-embedding-001", input="solo",
                                                     encoding_format="float", dimensions=3)
    assert raw.parse().data[0].embedding == gemini_values("solo", 0, 3)
    usage = raw.http_response.json()["usage"]
    assert usage["prompt_tokens"] == 1 and "cost" in usage  # estimated: Gemini reports no token counts
    sent = state.requests[-1]
    assert sent["method"] == "batchEmbedContents" and sent["key_ok"]
    assert sent["body"]["requests"][0]["outputDimensionality"] == 3


def test_gemini_refuses_token_arrays(gemini_gateway: tuple[GeminiFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = gemini_gateway
    response = httpx.post(harness.url + "/v1/embeddings", timeout=20, headers=auth(env),
                          json={"model": "google/gemini-embedding-001", "input": [[1, 2]]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert state.requests == []
