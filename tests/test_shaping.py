"""The shaping rules (router/shaping.py, router/rules.py, router/forwarding.py) as units, and a sweep that
sends what real clients send, shaped and translated by the real adapters, through the strict fakes' rule
table (tests/fakes/strict.py): every model family must accept what the gateway builds for it."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import msgspec
import pytest

from common.errors import GatewayError
from common.settings import load_settings
from router.catalog import Catalog, build_catalog
from decimal import Decimal

from router.forwarding import anthropic_betas, fields_for, refuse_priced, server_tools_worst_case
from router.providers import resolve_providers
from router.rules import RULES
from router.shaping import output_plan, shape_request, short_user
from tests.fakes import strict
from workers.providers import adapter_for
from workers.providers.base import Upstream, UpstreamError


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    settings = load_settings(env={}, config_path=None)
    return build_catalog(settings, resolve_providers(settings))


def shape(catalog: Catalog, model_id: str):  # noqa: ANN201
    model = catalog.get(model_id)
    assert model is not None, model_id
    return catalog.shape(model)


CLAUDE_CODE_USER = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s" * 36})


def everything(**extra: Any) -> dict[str, Any]:
    """A canonical body with what clients send that some model refuses (Claude Code's turn as the Messages
    format decodes it, plus the sampling most SDK examples set)."""
    body: dict[str, Any] = {
        "messages": [{"role": "system", "content": [{"type": "text", "text": "You are Claude Code.",
                                                       "cache_control": {"type": "ephemeral"}}]},
                     {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                  {"type": "text", "text": " \n"},
                                                  {"type": "text", "text": "go", "cache_control": {"type": "ephemeral"}}]}],
        "max_tokens": 32000, "temperature": 0.7, "top_p": 0.9, "presence_penalty": 0.1, "seed": 7,
        "user": CLAUDE_CODE_USER, "reasoning": {"enabled": True, "effort": "high"}, "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "Write", "parameters": {
            "type": "object", "properties": {"path": {"type": "string"}}}}, "cache_control": {"type": "ephemeral"}}],
    }
    body.update(extra)
    return body


# ------------------------------------------------------------------------------------- the rules as data


def test_every_rule_says_why_and_where() -> None:
    for rule in RULES:
        assert rule.why and rule.source.startswith("https://"), rule.id
    for rule in (*strict.OPENAI_RULES, *strict.ANTHROPIC_RULES, *strict.GEMINI_RULES):
        assert rule.source.startswith("https://"), rule.id
    assert len({r.id for r in RULES}) == len(RULES)


def test_shapes_by_family(catalog: Catalog) -> None:
    assert not shape(catalog, "openai/gpt-4o-mini").reasoning  # models.dev: no reasoning
    o3 = shape(catalog, "openai/o3")
    assert o3.max_tokens_field == "max_completion_tokens" and {"temperature", "top_p"} <= o3.drops
    assert not shape(catalog, "anthropic/claude-3-5-haiku-latest").reasoning
    assert shape(catalog, "anthropic/claude-sonnet-4-5").one_sampler
    assert not shape(catalog, "anthropic/claude-3-7-sonnet-latest").one_sampler
    assert shape(catalog, "anthropic/claude-opus-4-7").thinking == "adaptive"
    pro = shape(catalog, "google/gemini-2.5-pro")
    assert not pro.thinking_off and pro.budget_range == (128, 32768)
    assert shape(catalog, "google/gemini-2.5-flash").thinking_off
    assert shape(catalog, "openrouter/openai/o3").cache_control and not shape(catalog, "openai/o3").cache_control


def test_supported_parameters_leave_out_what_the_rules_refuse(catalog: Catalog) -> None:
    """``provider.require_parameters`` reads them: an endpoint that refuses top_p does not claim it."""
    assert "top_p" not in catalog.get("openai/o3").supported_parameters
    assert "seed" not in catalog.get("anthropic/claude-sonnet-4-5").supported_parameters
    assert "top_p" in catalog.get("openai/gpt-4o-mini").supported_parameters


# ------------------------------------------------------------------------------------- shaping a body


def test_claude_code_turn_shaped_for_gpt_4o_mini(catalog: Catalog) -> None:
    body = everything()
    shape_request(shape(catalog, "openai/gpt-4o-mini"), body)
    assert "reasoning" not in body and "reasoning_effort" not in body
    assert body["user"] == short_user(CLAUDE_CODE_USER, 64) and len(body["user"]) == 64
    assert "cache_control" not in json.dumps(body)
    assert body["max_tokens"] == 16384 and body["temperature"] == 0.7


def test_reasoning_model_shaped(catalog: Catalog) -> None:
    body = everything()
    shape_request(shape(catalog, "openai/gpt-5-mini"), body)
    assert body["max_completion_tokens"] == 32000 and "max_tokens" not in body
    assert not {"temperature", "top_p", "presence_penalty"} & set(body)
    assert body["reasoning"] == {"enabled": True, "effort": "high"}  # the adapter makes it reasoning_effort


def test_output_plan_covers_the_thinking_budget(catalog: Catalog) -> None:
    sonnet = shape(catalog, "anthropic/claude-sonnet-4-5")  # output limit 64,000
    plan = output_plan(sonnet, {"max_tokens": 1, "reasoning": {"max_tokens": 60000}})
    assert (plan.cap, plan.budget, plan.choices) == (61024, 60000, 1)
    plan = output_plan(sonnet, {"max_tokens": 1, "reasoning": {"max_tokens": 200000}})
    assert plan.cap == 64000 and plan.budget == 64000 - 1024  # within the model's limit
    assert output_plan(sonnet, {"max_tokens": 100, "reasoning_effort": "low"}) == (3072, 2048, 1)
    opus = shape(catalog, "anthropic/claude-opus-4-1")  # limit 32,000: Claude Code's own pair is kept
    assert output_plan(opus, {"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 31999}}) == \
        (32000, 31999, 1)
    haiku = shape(catalog, "anthropic/claude-3-5-haiku-latest")
    assert output_plan(haiku, {"max_tokens": 1, "reasoning": {"max_tokens": 60000}}) == (1, None, 1)
    assert output_plan(shape(catalog, "openai/gpt-4o-mini"), {"n": 3, "best_of": 5}).choices == 5
    assert output_plan(shape(catalog, "openai/gpt-4o-mini"), {}).cap is None  # the model's own limit applies
    assert output_plan(sonnet, {}, prompt_tokens=190_000).cap == 10_000  # what fits the context


@pytest.mark.parametrize("model", ["anthropic/claude-sonnet-4-5", "anthropic/claude-3-7-sonnet-latest",
                                   "openai/o3", "openai/gpt-4o-mini", "google/gemini-2.5-pro",
                                   "anthropic/claude-opus-4-7"])
@pytest.mark.parametrize("extra", [{}, {"max_tokens": 1, "reasoning": {"max_tokens": 60000}},
                                   {"max_completion_tokens": 500, "n": 4}, {"reasoning_effort": "minimal"},
                                   {"thinking": {"type": "enabled", "budget_tokens": 5000}}])
def test_the_plan_of_a_shaped_body_is_its_plan(catalog: Catalog, model: str, extra: dict[str, Any]) -> None:
    """Admission plans the unshaped body, the adapter reads the shaped one: both must give one answer."""
    endpoint = shape(catalog, model)
    body = {**everything(), **extra}
    if "max_tokens" not in extra:
        body.pop("max_tokens")
    planned = output_plan(endpoint, copy.deepcopy(body))
    assert shape_request(endpoint, body) == planned
    assert output_plan(endpoint, body) == planned


def test_anthropic_adapter_sends_the_plan(catalog: Catalog) -> None:
    endpoint = shape(catalog, "anthropic/claude-sonnet-4-5")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "reasoning": {"max_tokens": 60000}}
    planned = output_plan(endpoint, body)
    shape_request(endpoint, body)
    up = Upstream(provider="anthropic", kind="anthropic", base_url="http://x", shape=endpoint)
    sent = msgspec.json.decode(adapter_for("anthropic").chat_request(up, "claude-sonnet-4-5", body, False).content)
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (planned.cap, planned.budget)


def test_gemini_reasoning_off_only_where_it_can_be(catalog: Catalog) -> None:
    pro, flash = shape(catalog, "google/gemini-2.5-pro"), shape(catalog, "google/gemini-2.5-flash")
    off = {"messages": [{"role": "user", "content": "hi"}], "reasoning": {"enabled": False}}
    pro_body, flash_body = copy.deepcopy(off), copy.deepcopy(off)
    shape_request(pro, pro_body)
    shape_request(flash, flash_body)
    assert "reasoning" not in pro_body and flash_body["reasoning"] == {"enabled": False}


# ------------------------------------------------------------------------------------- forwarding


def test_fields_by_allow_list() -> None:
    assert fields_for("openai", "vllm", local=True) is None  # the operator's own server takes anything
    assert fields_for("anthropic", "anthropic") is None  # the adapter builds its body from known fields
    openai_fields = fields_for("openai", "openai")
    assert openai_fields is not None and "store" not in openai_fields and "top_k" not in openai_fields
    assert "top_k" in (fields_for("openai", "together") or ())


def test_priced_extras() -> None:
    for body, param in (({"service_tier": "priority"}, "service_tier"), ({"plugins": [{"id": "web"}]}, "plugins[0].id"),
                        ({"web_search_options": {}}, "web_search_options"), ({"container": "c"}, "container")):
        with pytest.raises(GatewayError) as refused:
            refuse_priced(body)
        assert refused.value.param == param and refused.value.status == 400
    refuse_priced({"service_tier": "auto"})


def test_server_tools_priced_or_refused(catalog: Catalog) -> None:
    """Anthropic's web search is billed per search: reserved as max_uses searches, billed as reported;
    unbounded, on a free model, or a tool billed by the hour: a 400 naming it."""
    client_run = [{"name": "x", "input_schema": {}}, {"type": "bash_20250124", "name": "bash"}]
    assert server_tools_worst_case(client_run, free=False) == 0
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
    assert server_tools_worst_case([search], free=False) == Decimal("0.08")
    for tools, free, param in (([{**search, "max_uses": None}], False, "tools[0].max_uses"),
                               ([search], True, "tools[0].type"),
                               ([{"type": "code_execution_20250825", "name": "code"}], False, "tools[0].type")):
        with pytest.raises(GatewayError) as refused:
            server_tools_worst_case(tools, free=free)
        assert refused.value.param == param
    sonnet = catalog.get("anthropic/claude-sonnet-4-5")
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "server_tool_use": {"web_search_requests": 3}}
    assert catalog.cost(sonnet, usage) == Decimal("0.03")


def test_betas() -> None:
    assert anthropic_betas("claude-code-20250219, effort-2025-11-24,brand-new-2030-01-01") == \
        "claude-code-20250219,effort-2025-11-24"
    with pytest.raises(GatewayError):
        anthropic_betas("context-1m-2025-08-07")
    assert anthropic_betas("context-1m-2025-08-07", refuse=False) is None


# ------------------------------------------------------------------------------------- the fakes agree


SWEEP = ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4.1", "openai/o3", "openai/o4-mini", "openai/gpt-5",
         "openai/gpt-5-mini", "anthropic/claude-3-5-haiku-latest", "anthropic/claude-3-7-sonnet-latest",
         "anthropic/claude-sonnet-4-0", "anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4-5",
         "anthropic/claude-opus-4-1", "anthropic/claude-opus-4-7", "google/gemini-2.5-pro",
         "google/gemini-2.5-flash", "google/gemini-2.5-flash-lite", "google/gemini-2.0-flash"]
ASKS = [{}, {"reasoning": {"enabled": False}}, {"reasoning_effort": "minimal"},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "additionalProperties": False, "properties": {"a": {"const": 1}}}}}},
        {"max_tokens": 1, "reasoning": {"max_tokens": 60000}}, {"max_completion_tokens": 200000},
        {"thinking": {"type": "enabled", "budget_tokens": 31999}}]


@pytest.mark.parametrize("model_id", SWEEP)
def test_every_family_takes_what_the_gateway_builds(catalog: Catalog, model_id: str) -> None:
    """Shaped by the gateway and translated by the real adapter, each request passes the fake's rules for
    its family: the gateway never sends what the provider refuses."""
    model = catalog.get(model_id)
    assert model is not None
    endpoint = catalog.shape(model)
    rules = {"openai": strict.OPENAI_RULES, "anthropic": strict.ANTHROPIC_RULES, "gemini": strict.GEMINI_RULES}
    for ask in ASKS:
        body = {**everything(), **ask}
        shape_request(endpoint, body)
        up = Upstream(provider=model.provider, kind=endpoint.kind, base_url="http://x", shape=endpoint,
                      quirks={"no_dummy_thought_signature": True})
        try:
            spec = adapter_for(endpoint.kind).chat_request(up, model.upstream_id, body, True)
        except UpstreamError as refused:  # the gateway's own 400 before any call (e.g. JSON + tools on old Claude)
            assert refused.error_type == "invalid_request" and refused.status == 400, refused
            continue
        sent = msgspec.json.decode(spec.content)
        assert strict.first_refusal(rules[endpoint.kind], model.upstream_id, sent) is None, (ask, sent)


def test_the_fakes_refuse_what_the_providers_refuse() -> None:
    """The table catches each defect the issue lists (so the sweep above can fail)."""
    refuse = strict.first_refusal
    assert refuse(strict.OPENAI_RULES, "gpt-4o-mini", {"reasoning_effort": "high"})
    assert refuse(strict.OPENAI_RULES, "gpt-5-mini", {"max_tokens": 10})
    assert refuse(strict.OPENAI_RULES, "o3", {"temperature": 0.5})
    assert refuse(strict.OPENAI_RULES, "gpt-4o-mini", {"user": "u" * 150})
    assert refuse(strict.OPENAI_RULES, "gpt-4o-mini", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]})
    assert refuse(strict.OPENAI_RULES, "gpt-4o-mini", {"thinking": {}})
    assert refuse(strict.ANTHROPIC_RULES, "claude-sonnet-4-5", {"temperature": 0.5, "top_p": 0.9})
    assert refuse(strict.ANTHROPIC_RULES, "claude-3-5-haiku-latest", {"thinking": {"type": "enabled"}})
    assert refuse(strict.ANTHROPIC_RULES, "claude-sonnet-4-5", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "  "}]}]})
    assert refuse(strict.ANTHROPIC_RULES, "claude-3-5-haiku-latest", {"max_tokens": 32000})
    assert refuse(strict.GEMINI_RULES, "gemini-2.5-pro", {"generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}})
    assert refuse(strict.GEMINI_RULES, "gemini-2.5-flash", {"generationConfig": {"frequency": 1}})
    assert refuse(strict.GEMINI_RULES, "gemini-2.5-flash", {"safety": []})
    assert refuse(strict.GEMINI_RULES, "gemini-2.5-flash", {"tools": [{"functionDeclarations": [
        {"name": "f", "parameters": {"type": "object", "additionalProperties": False}}]}]})
    assert not refuse(strict.OPENAI_RULES, "gpt-4o-mini", {"temperature": 0.5, "max_tokens": 10})


def test_shaping_cost_per_request(catalog: Catalog) -> None:
    """Not a speed assertion: prints what shaping costs per request (README, report)."""
    endpoint = shape(catalog, "openai/gpt-4o-mini")
    template = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 100, "temperature": 0.5}
    rounds = 20000
    bodies = [dict(template) for _ in range(rounds)]
    started = time.perf_counter()
    for body in bodies:
        shape_request(endpoint, body, cache_control=False)
    per = (time.perf_counter() - started) / rounds * 1e6
    print(f"\nshape_request: {per:.2f} µs per request (gpt-4o-mini, plain chat body)")
