"""Legacy ``POST /completions`` end to end: the OpenAI SDK through the queue to the strict fake OpenAI.

What editor autocomplete sends (``prompt`` + ``suffix``, fill-in-the-middle, streamed), billed once at the
catalog's price, and OpenAI's refusals answered by the gateway before any upstream call.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState, token_text
from tests.harness import GatewayHarness, auth, env_for, sdk_for, with_test_key

MODEL = "gpt-3.5-turbo-instruct"
PROMPT_PRICE, COMPLETION_PRICE = Decimal("1.5E-6"), Decimal("2E-6")  # genai-prices' list price


def cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return PROMPT_PRICE * prompt_tokens + COMPLETION_PRICE * completion_tokens


def test_fill_in_the_middle(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    prompt, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, suffix=suffix, max_tokens=4,
                                                      temperature=0, stop=["\n\n"])
    result = raw.parse()
    expected = f"<fim {len(prompt)}|{len(suffix)}>" + "".join(token_text(i) for i in range(4))
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "length"
    assert result.object == "text_completion" and result.id.startswith("cmpl-")
    assert result.model == "openai/gpt-3.5-turbo-instruct"
    assert raw.headers["x-megabrain-provider"] == "openai"
    body = raw.http_response.json()
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12,
                             "cost": float(cost(8, 4))}
    sent = fake_openai[0].requests[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["body"] == {"model": MODEL, "prompt": prompt, "suffix": suffix, "max_tokens": 4,
                            "temperature": 0, "stop": ["\n\n"]}


def test_stream_with_usage(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    stream = client.completions.create(model=MODEL, prompt="x = ", suffix=";", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "<fim 4|1>" + "".join(token_text(i) for i in range(3))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert {c.model for c in chunks} == {"openai/gpt-3.5-turbo-instruct"}
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 3)
    assert Decimal(str(usage.model_extra["cost"])) == cost(2, 3)


def test_stream_without_usage_still_bills(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str],
                                          gateway: GatewayHarness) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2, stream=True))
    assert all(c.usage is None for c in chunks)
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]
    sent = fake_openai[0].requests[-1]["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}  # we bill from it


def test_generation_lookup(client: openai.OpenAI) -> None:
    result = client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
    record = client.get("/generation", cast_to=object, options={"params": {"id": result.id}})["data"]
    assert record["model"] == "openai/gpt-3.5-turbo-instruct"
    assert (record["tokens_prompt"], record["tokens_completion"]) == (1, 2)
    assert Decimal(str(record["total_cost"])) == cost(1, 2)


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": MODEL, "prompt": "x", "suffix": "y", "echo": True}, "echo"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": ["a", 1]}, "prompt"),
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
        ({"model": MODEL, "prompt": "x", "stream": True, "best_of": 2}, "best_of"),
        ({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "gpt-4o-mini", "prompt": "x"}, "model"),  # a chat model: OpenAI has no /completions for it
        ({"model": "text-embedding-3-small", "prompt": "x"}, "model"),
    ],
)
def test_refused_before_any_upstream_call(gateway: GatewayHarness, gateway_env: dict[str, str],
                                          fake_openai: tuple[OpenAIFakeState, str], payload: dict,
                                          param: str) -> None:
    response = httpx.post(gateway.url + "/v1/completions", json=payload, headers=auth(gateway_env), timeout=20)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []


def test_listed_as_completion_models(gateway: GatewayHarness) -> None:
    listed = httpx.get(gateway.url + "/v1/models?modality=completion", timeout=20).json()["data"]
    assert "openai/gpt-3.5-turbo-instruct" in {m["id"] for m in listed}
    chat = httpx.get(gateway.url + "/v1/models", timeout=20).json()["data"]
    assert "openai/gpt-3.5-turbo-instruct" not in {m["id"] for m in chat}


@pytest.fixture
def codestral_gateway(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                      ) -> Iterator[tuple[GatewayHarness, dict[str, str]]]:
    """Codestral at its own endpoint (Mistral's fill-in-the-middle API), served by the fake's /fim route."""
    env = with_test_key(env_for(redis_url, CODESTRAL_BASE_URL=fake_openai[1], CODESTRAL_API_KEY="sk-codestral"))
    with GatewayHarness.from_env(env, pools=("codestral",)) as harness:
        yield harness, env


def test_codestral_fill_in_the_middle(codestral_gateway: tuple[GatewayHarness, dict[str, str]],
                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    harness, env = codestral_gateway
    client = sdk_for(harness.url, env)
    result = client.completions.create(model="codestral/codestral-2508", prompt="def f(", suffix="):", max_tokens=3,
                                       seed=7)
    assert result.choices[0].text == "<fim 6|2>tok0 tok1 tok2 " and result.model == "codestral/codestral-2508"
    sent = fake_openai[0].requests[-1]
    assert sent["path"] == "/v1/fim/completions"
    assert sent["body"] == {"model": "codestral-2508", "prompt": "def f(", "suffix": "):", "max_tokens": 3,
                            "random_seed": 7}
    chunks = list(client.completions.create(model="codestral/codestral-2508", prompt="x", suffix="y",
                                            max_tokens=2, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "<fim 1|1>tok0 tok1 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError) as refused:  # Mistral has no logprobs: refused, never dropped
        client.completions.create(model="codestral/codestral-2508", prompt="x", logprobs=2)
    assert refused.value.body["param"] == "logprobs"  # type: ignore[index]
