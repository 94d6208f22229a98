"""Each model gets only what it takes, through the whole gateway, against fakes as strict as the providers
(``tests/fakes/strict.py``): requests real clients send — Claude Code's on both paths, the OpenAI SDK's with
``max_tokens`` to reasoning models — succeed instead of ending in an upstream 400 the client cannot act on.

Also here: the Messages answer names the model the client asked for (both paths, JSON and stream), and
admission's worst case is the real one (``n``, thinking budgets), refusing what would overspend a budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from api.access.keys import KeyStore
from api.access.worst_case import worst_case_cost
from common.names import Names
from common.redis import connect
from common.wire import Route
from tests.harness import Fakes, GatewayHarness, config_file, env_for

GPT_MINI = "openai/gpt-4o-mini"
GPT5_MINI = "openai/gpt-5-mini"
O3 = "openai/o3"
SONNET = "anthropic/claude-sonnet-4-5"
HAIKU_35 = "anthropic/claude-3-5-haiku-latest"
OPUS_47 = "anthropic/claude-opus-4-7"
GEMINI_PRO = "google/gemini-2.5-pro"
FREE = "openai/gpt-4.1-nano"
CLAUDE_CODE_USER = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s" * 36})  # ~150 chars
HI = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def fakes() -> Fakes:
    return Fakes()


@pytest.fixture(scope="module")
def stack(redis_url: str, fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    config = config_file(tmp_path_factory.mktemp("shaping"))
    with fakes.serving() as upstreams:
        env = env_for(redis_url, MEGABRAIN_CONFIG=config, MEGABRAIN_FREE_MODELS=FREE,
                      MEGABRAIN_UPSTREAM_MAX_RETRIES="0", **upstreams)

        async def keys() -> dict[str, str]:
            redis = connect(redis_url)
            try:
                store = KeyStore(redis, Names(env["MEGABRAIN_NAMESPACE"]))
                return {"open": (await store.create("open"))[1],
                        "tenth": (await store.create("tenth", monthly_budget=0.001))[1],
                        "cent": (await store.create("cent", monthly_budget=0.01))[1],
                        "five": (await store.create("five", monthly_budget=5.0))[1]}
            finally:
                await redis.aclose()

        made = asyncio.run(keys())
        with GatewayHarness.from_env(env, pools=("openai", "anthropic", "google")) as harness:
            yield {"harness": harness, **made}


@pytest.fixture
def gw(stack: dict[str, Any], fakes: Fakes) -> dict[str, Any]:
    fakes.reset()
    return stack


def chat(gw: dict[str, Any], key: str = "open", **body: Any) -> httpx.Response:
    return httpx.post(gw["harness"].url + "/v1/chat/completions", json={"messages": HI, **body},
                      headers={"authorization": f"Bearer {gw[key]}"}, timeout=20)


def messages(gw: dict[str, Any], body: dict[str, Any], key: str = "open",
             beta: str | None = None) -> httpx.Response:
    headers = {"x-api-key": gw[key], "anthropic-version": "2023-06-01"}
    if beta:
        headers["anthropic-beta"] = beta
    return httpx.post(gw["harness"].url + "/v1/messages?beta=true", json=body, headers=headers, timeout=20)


# ------------------------------------------------------------------ send each model only what it takes


def claude_code_turn(model: str, stream: bool = False) -> dict[str, Any]:
    """The body Claude Code 2.1 sends on every turn (reference/agent-clients.md)."""
    return {"model": model, "max_tokens": 32000, "stream": stream,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>/tmp</system-reminder>"},
                {"type": "text", "text": "Create hello.txt", "cache_control": {"type": "ephemeral"}}]}],
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "metadata": {"user_id": CLAUDE_CODE_USER}}


def test_claude_code_turn_to_a_model_without_reasoning(gw: dict[str, Any], fakes: Fakes) -> None:
    """gpt-4o-mini: no reasoning_effort (OpenAI: "not supported with this model"), a user id within 64
    characters, no cache_control in content parts, max_tokens within its limit."""
    response = messages(gw, claude_code_turn("gpt-4o-mini"), beta="claude-code-20250219")
    assert response.status_code == 200, response.text
    sent = fakes.openai.requests[-1]["body"]
    assert "reasoning_effort" not in sent and "reasoning" not in sent
    assert len(sent["user"]) <= 64
    assert "cache_control" not in json.dumps(sent)
    assert sent["max_tokens"] == 16384
    assert fakes.openai.refusals == []


@pytest.mark.parametrize("model", [GPT5_MINI, O3])
def test_reasoning_models_take_max_completion_tokens(gw: dict[str, Any], fakes: Fakes, model: str) -> None:
    """The spelling most clients send (max_tokens, temperature) works on OpenAI's reasoning models."""
    response = chat(gw, model=model, max_tokens=300, temperature=0.2, top_p=0.9, presence_penalty=0.5)
    assert response.status_code == 200, response.text
    sent = fakes.openai.requests[-1]["body"]
    assert sent["max_completion_tokens"] == 300 and "max_tokens" not in sent
    assert not {"temperature", "top_p", "presence_penalty"} & set(sent)
    claude_code = messages(gw, claude_code_turn(model.split("/")[1], stream=True))
    assert claude_code.status_code == 200, claude_code.text
    sent = fakes.openai.requests[-1]["body"]
    assert sent["reasoning_effort"] == "high" and "max_tokens" not in sent


def test_responses_max_output_tokens_to_a_reasoning_model(gw: dict[str, Any], fakes: Fakes) -> None:
    client = openai.OpenAI(base_url=gw["harness"].url + "/v1", api_key=gw["open"], max_retries=0, timeout=20)
    answer = client.responses.create(model=GPT5_MINI, input="Hello", max_output_tokens=500, temperature=0.3)
    assert answer.status == "completed"
    assert fakes.openai.requests[-1]["body"]["max_completion_tokens"] == 500


def test_claude_sampling_pair_and_whitespace(gw: dict[str, Any], fakes: Fakes) -> None:
    """Sonnet 4.5 refuses temperature with top_p; Anthropic refuses whitespace-only text blocks."""
    response = chat(gw, model=SONNET, temperature=0.5, top_p=0.9, max_tokens=100,
                    messages=[{"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                           {"type": "text", "text": " \n "}]}])
    assert response.status_code == 200, response.text
    sent = fakes.anthropic.requests[-1]["body"]
    assert sent["temperature"] == 0.5 and "top_p" not in sent
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "Hello"}]


def test_no_thinking_to_a_claude_without_it(gw: dict[str, Any], fakes: Fakes) -> None:
    """3.5 Haiku has no extended thinking: an agent's default effort is dropped, on both paths."""
    assert chat(gw, model=HAIKU_35, reasoning_effort="high").status_code == 200
    assert "thinking" not in fakes.anthropic.requests[-1]["body"]
    response = messages(gw, claude_code_turn("claude-3-5-haiku-latest"))
    assert response.status_code == 200, response.text
    sent = fakes.anthropic.requests[-1]["body"]
    assert "thinking" not in sent and "effort" not in sent.get("output_config", {})
    assert sent["max_tokens"] == 8192 and "context_management" in sent  # native: the rest goes as sent


def test_adaptive_only_claude(gw: dict[str, Any], fakes: Fakes) -> None:
    """Opus 4.7 takes no sampling parameters and thinks only adaptively."""
    response = chat(gw, model=OPUS_47, temperature=0.3, reasoning={"max_tokens": 4000}, max_tokens=2000)
    assert response.status_code == 200, response.text
    sent = fakes.anthropic.requests[-1]["body"]
    assert sent["thinking"] == {"type": "adaptive"} and "temperature" not in sent


def test_gemini_pro_cannot_stop_thinking(gw: dict[str, Any], fakes: Fakes) -> None:
    assert chat(gw, model=GEMINI_PRO, reasoning={"enabled": False}).status_code == 200
    config = fakes.gemini.requests[-1]["body"].get("generationConfig", {})
    assert config.get("thinkingConfig", {}).get("thinkingBudget") != 0
    assert chat(gw, model=GEMINI_PRO, reasoning={"max_tokens": 100000}).status_code == 200
    assert fakes.gemini.requests[-1]["body"]["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 32768


def test_require_parameters_names_the_parameter(gw: dict[str, Any], fakes: Fakes) -> None:
    """Asked explicitly, a parameter no endpoint takes is a 400 naming it, before any upstream call."""
    before = len(fakes.openai.requests)
    response = chat(gw, model=GPT_MINI, reasoning_effort="high", provider={"require_parameters": True})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "reasoning"
    assert len(fakes.openai.requests) == before


# ------------------------------------------------------------------ the answer names the model asked for


@pytest.mark.parametrize("asked", ["claude-sonnet-4-5", "anthropic/claude-sonnet-4-5", "gpt-4o-mini"])
@pytest.mark.parametrize("stream", [False, True])
def test_messages_answer_echoes_the_model_sent(gw: dict[str, Any], asked: str, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gw["harness"].url, api_key=gw["open"], max_retries=0, timeout=20)
    if stream:
        with client.messages.stream(model=asked, max_tokens=100, messages=HI) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model=asked, max_tokens=100, messages=HI)
    assert message.model == asked


# ------------------------------------------------------------------ a request's worst case is its real one


def worst(gw: dict[str, Any], model: str, body: dict[str, Any], prompt: int = 2) -> Decimal:
    catalog = gw["harness"].server.config.app.state.gateway.catalog
    route = Route(provider=model.split("/")[0], model=model, upstream_model=model.split("/", 1)[1])
    return worst_case_cost(catalog, [route], prompt, body)


def test_n_multiplies_the_reservation(gw: dict[str, Any], fakes: Fakes) -> None:
    """One ``n: 128`` request on a $0.001 budget: reserved for 128 answers, so refused, not 38× overspent."""
    response = chat(gw, "tenth", model=GPT_MINI, n=128, max_tokens=500)
    assert response.status_code == 402 and response.json()["error_type"] == "budget_exceeded"
    assert worst(gw, GPT_MINI, {"n": 128, "max_tokens": 500}) > 100 * worst(gw, GPT_MINI, {"max_tokens": 500})
    fakes.openai.tokens = 1
    answer = chat(gw, "tenth", model=GPT_MINI, n=4, max_tokens=1)  # fits: 4 answers of 1 token
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["choices"]) == 4
    assert Decimal(str(answer.json()["usage"]["cost"])) <= worst(gw, GPT_MINI, {"n": 4, "max_tokens": 1}, 2)


def test_thinking_budget_is_reserved_as_sent(gw: dict[str, Any], fakes: Fakes) -> None:
    """``max_tokens: 1`` with a 60,000-token thinking budget to Claude: Anthropic is sent max_tokens 61,024,
    so that is what is reserved: refused on a $0.01 budget, and on a larger one the cap sent is the one
    reserved for."""
    body = {"max_tokens": 1, "reasoning": {"max_tokens": 60000}}
    refused = chat(gw, "cent", model=SONNET, **body)
    assert refused.status_code == 402, refused.text
    assert fakes.anthropic.requests == []
    served = chat(gw, "five", model=SONNET, **body)
    assert served.status_code == 200, served.text
    sent = fakes.anthropic.requests[-1]["body"]
    assert sent["thinking"]["budget_tokens"] == 60000 and sent["max_tokens"] == 61024
    reserved = worst(gw, SONNET, body, prompt=1)
    price = Decimal(gw["harness"].server.config.app.state.gateway.catalog.get(SONNET).completion_price)
    assert reserved >= price * sent["max_tokens"]
    assert Decimal(str(served.json()["usage"]["cost"])) <= reserved


def test_free_models_answer_one_choice(gw: dict[str, Any], fakes: Fakes) -> None:
    anonymous = httpx.post(gw["harness"].url + "/v1/chat/completions",
                           json={"model": FREE, "messages": HI, "n": 5}, timeout=20)
    assert anonymous.status_code == 400 and anonymous.json()["error"]["param"] == "n"
    assert fakes.openai.requests == []


# ------------------------------------------------------------------ forward by allow-list


@pytest.mark.parametrize(("extra", "param"), [
    ({"service_tier": "priority"}, "service_tier"),
    ({"plugins": [{"id": "web"}]}, "plugins[0].id"),
    ({"web_search_options": {}}, "web_search_options"),
])
@pytest.mark.parametrize("model", [GPT_MINI, FREE])
def test_priced_fields_are_refused(gw: dict[str, Any], fakes: Fakes, extra: dict[str, Any], param: str,
                                   model: str) -> None:
    response = chat(gw, model=model, **extra)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert fakes.openai.requests == []


def test_web_search_is_priced_natively(gw: dict[str, Any], fakes: Fakes) -> None:
    """Claude Code's WebSearch asks Anthropic's server web_search tool: reserved as max_uses searches
    ($0.01 each) on top of the tokens, billed as the answer reports; unbounded, a 400 naming max_uses."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": HI,
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}
    assert messages(gw, body, key="cent").status_code == 402  # 100 tokens + 3 searches > $0.01
    served = messages(gw, body, key="five")
    assert served.status_code == 200, served.text
    assert fakes.anthropic.requests[-1]["body"]["tools"][0]["type"] == "web_search_20250305"
    cost = Decimal(served.headers["x-megabrain-cost"])  # the native body is Anthropic's own: no cost in it
    assert Decimal("0.01") < cost < Decimal("0.01") + 100 * Decimal("0.000015") + Decimal("0.001")
    unbounded = messages(gw, {**body, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert unbounded.status_code == 400 and "max_uses" in unbounded.json()["error"]["message"]


def test_priced_anthropic_extras_are_refused(gw: dict[str, Any], fakes: Fakes) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": HI}
    running = {**body, "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}
    response = messages(gw, running)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "tools[0].type" in response.json()["error"]["message"]
    long_context = messages(gw, body, beta="claude-code-20250219,context-1m-2025-08-07")
    assert long_context.status_code == 400 and "context-1m-2025-08-07" in long_context.json()["error"]["message"]
    assert fakes.anthropic.requests == []


def test_claude_code_betas_pass_natively(gw: dict[str, Any], fakes: Fakes) -> None:
    betas = ("claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
             "context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
             "effort-2025-11-24,some-future-beta-2027-01-01")
    body = claude_code_turn("claude-sonnet-4-5")
    body["thinking"] = {"type": "enabled", "budget_tokens": 31999}
    body["tools"] = [{"name": "Write", "description": "Write a file", "input_schema": {
        "type": "object", "properties": {"file_path": {"type": "string"}}}}]
    response = messages(gw, body, beta=betas)
    assert response.status_code == 200, response.text
    sent = fakes.anthropic.requests[-1]
    assert sent["headers"]["anthropic-beta"] == betas.rsplit(",", 1)[0]  # the unknown one is left out
    assert sent["body"]["thinking"] == {"type": "enabled", "budget_tokens": 31999}
    assert sent["body"]["max_tokens"] == 32000
