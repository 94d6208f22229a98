"""``POST /rerank`` end to end, in Cohere's shape, through the queue to strict Cohere and Jina fakes."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from tests.fakes.rerank_server import RerankFakeState, create_rerank_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, auth, env_for, with_test_key

DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", {"text": "The capital city of Italy."}]


@pytest.fixture
def rerank_gateway(redis_url: str) -> Iterator[tuple[RerankFakeState, GatewayHarness, dict[str, str]]]:
    """Cohere (its compatibility base, as the registry has it) and Jina, both served by one fake."""
    state = RerankFakeState()
    with ThreadedServer(create_rerank_app(state)) as server:
        env = with_test_key(env_for(redis_url, COHERE_BASE_URL=server.url + "/compatibility/v1",
                                    COHERE_API_KEY=state.api_key, JINA_BASE_URL=server.url + "/v1",
                                    JINA_API_KEY=state.api_key, VOYAGE_BASE_URL=server.url + "/voyage/v1",
                                    VOYAGE_API_KEY=state.api_key))
        with GatewayHarness.from_env(env, pools=("cohere", "jina", "voyage")) as harness:
            yield state, harness, env


def post(harness: GatewayHarness, env: dict[str, str], body: dict) -> httpx.Response:
    return httpx.post(harness.url + "/v1/rerank", json=body, headers=auth(env), timeout=20)


def test_cohere_by_search_unit(rerank_gateway: tuple[RerankFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = rerank_gateway
    response = post(harness, env, {"model": "cohere/rerank-v3.5", "query": "capital of France",
                                   "documents": DOCUMENTS, "top_n": 2, "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == [0, 2]
    assert body["results"][0] == {"index": 0, "relevance_score": 1.0,
                                  "document": {"text": "Paris is the capital of France."}}
    assert body["model"] == "cohere/rerank-v3.5" and body["provider"] == "cohere"
    assert body["usage"]["search_units"] == 1 and Decimal(str(body["usage"]["cost"])) == Decimal("0.002")
    sent = state.requests[-1]
    assert sent["path"] == "/v2/rerank" and sent["key_ok"]
    assert sent["body"] == {"model": "rerank-v3.5", "query": "capital of France", "top_n": 2,
                            "documents": ["Paris is the capital of France.", "Berlin is in Germany.",
                                          "The capital city of Italy."]}
    record = httpx.get(harness.url + "/api/v1/generation", params={"id": body["id"]}, headers=auth(env),
                       timeout=20).json()["data"]
    assert Decimal(str(record["total_cost"])) == Decimal("0.002")


def test_jina_by_token(rerank_gateway: tuple[RerankFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = rerank_gateway
    response = post(harness, env, {"model": "jina/jina-reranker-v2-base-multilingual", "query": "Germany",
                                   "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["index"] == 1 and "document" not in body["results"][0]
    tokens = sum(1 + len(str(d if isinstance(d, str) else d["text"]).split()) for d in DOCUMENTS)
    assert body["usage"]["total_tokens"] == tokens
    assert Decimal(str(body["usage"]["cost"])) == Decimal("0.00000002") * tokens
    assert state.requests[-1]["path"] == "/v1/rerank"


def test_voyage_takes_top_k(rerank_gateway: tuple[RerankFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = rerank_gateway
    response = post(harness, env, {"model": "voyage/rerank-2.5", "query": "capital city", "documents": DOCUMENTS,
                                   "top_n": 1, "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == [{"index": 2, "relevance_score": 1.0, "document": {"text": "The capital city of Italy."}}]
    assert state.requests[-1]["body"]["top_k"] == 1 and "top_n" not in state.requests[-1]["body"]
    assert Decimal(str(body["usage"]["cost"])) == Decimal("0.00000005") * body["usage"]["total_tokens"]


def test_retried_upstream_error(rerank_gateway: tuple[RerankFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = rerank_gateway
    state.failures = [503]
    response = post(harness, env, {"model": "cohere/rerank-v3.5", "query": "x", "documents": ["a"]})
    assert response.status_code == 200 and len(state.requests) == 2


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": "cohere/rerank-v3.5", "query": "x", "documents": []}, "documents"),
        ({"model": "cohere/rerank-v3.5", "query": "x", "documents": ["a", ""]}, "documents[1]"),
        ({"model": "cohere/rerank-v3.5", "query": "x", "documents": [{"title": "a"}]}, "documents[0]"),
        ({"model": "cohere/rerank-v3.5", "query": "x", "documents": ["a"] * 1001}, "documents"),
        ({"model": "cohere/rerank-v3.5", "query": "", "documents": ["a"]}, "query"),
        ({"model": "cohere/rerank-v3.5", "query": "x", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"model": "cohere/rerank-v3.5", "documents": ["a"]}, "query"),
        ({"model": "gpt-4o-mini", "query": "x", "documents": ["a"]}, "model"),
    ],
)
def test_refused_before_any_upstream_call(rerank_gateway: tuple[RerankFakeState, GatewayHarness, dict[str, str]],
                                          payload: dict, param: str) -> None:
    state, harness, env = rerank_gateway
    response = post(harness, env, payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert state.requests == []
