"""What the real providers refuse, per model family, as a table the fakes consult: each rule says which
models it covers, finds the problem in a request body, answers with the provider's own 400 message, and
cites where the provider says so (or where its 400 was seen).

The fakes (``openai_server.py``, ``anthropic_server.py``, ``gemini_server.py``) run ``first_refusal`` on
every request, so a gateway that sends a model what it does not take fails a test here instead of a user's
session. The gateway's side of the same facts is ``router/rules.py``; the two are written separately on
purpose, so that one cannot hide a mistake of the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Problem = tuple[str, str | None, str | None]  # (message, param, code) as the provider reports them
Check = Callable[[str, dict[str, Any]], Problem | None]


@dataclass(frozen=True)
class FakeRule:
    id: str
    models: re.Pattern[str]  # searched in the request's model id
    check: Check
    source: str


def first_refusal(rules: tuple[FakeRule, ...], model: str, body: dict[str, Any]) -> Problem | None:
    """The first problem the provider would answer with a 400, or None."""
    for rule in rules:
        if rule.models.search(model):
            problem = rule.check(model, body)
            if problem is not None:
                return problem
    return None


def _rule(id: str, models: str, source: str) -> Callable[[Check], FakeRule]:
    def wrap(check: Check) -> FakeRule:
        return FakeRule(id, re.compile(models), check, source)
    return wrap


# =============================================================================================== OpenAI

OPENAI_REASONING = r"^(?:o[1-9]|gpt-5(?!-chat))"
OPENAI_NON_REASONING = r"^(?:gpt-4|gpt-3\.5|gpt-5-chat|chatgpt)"
OPENAI_MODELS = r"^(?:o[1-9]|gpt-|chatgpt)"
ANY = r""

# The Chat Completions request body (https://platform.openai.com/docs/api-reference/chat/create).
OPENAI_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
# Sampling extensions open-model hosts take beside OpenAI's fields (vLLM's extra sampling parameters).
COMPAT_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "top_a", "include_reasoning"})
OPENAI_PART_KEYS = {"text": {"type", "text"}, "image_url": {"type", "image_url"},
                    "input_audio": {"type", "input_audio"}, "file": {"type", "file"},
                    "refusal": {"type", "refusal"}}
# Output limits per family (models.dev; OpenAI's model pages).
OPENAI_OUTPUT_LIMITS = ((r"^gpt-4o", 16384), (r"^gpt-4\.1", 32768), (r"^o[1-9]", 100000), (r"^gpt-5", 128000))


@_rule("openai-unknown-field", ANY, "https://platform.openai.com/docs/api-reference/chat/create")
def _openai_unknown_field(model: str, body: dict[str, Any]) -> Problem | None:
    known = OPENAI_FIELDS if re.search(OPENAI_MODELS, model) else OPENAI_FIELDS | COMPAT_EXTRAS
    for name in body:
        if name not in known:
            return f"Unrecognized request argument supplied: {name}", None, None
    return None


@_rule("openai-part-properties", ANY, "https://github.com/transitive-bullshit/agentic/issues/531")
def _openai_part_properties(model: str, body: dict[str, Any]) -> Problem | None:
    """Content parts and tools are closed objects: ``cache_control`` (Anthropic's) is an unexpected key."""
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str) or kind not in OPENAI_PART_KEYS:
                return (f"Invalid value: {kind!r}. Supported values are: {', '.join(map(repr, OPENAI_PART_KEYS))}.",
                        f"messages[{i}].content[{j}].type", "invalid_value")
            extra = sorted(set(part) - OPENAI_PART_KEYS[kind])
            if extra:
                return (f"Additional properties are not allowed ('{extra[0]}' was unexpected) - "
                        f"'messages.{i}.content.{j}'", f"messages[{i}].content[{j}]", None)
    for t, tool in enumerate(body.get("tools") or ()):
        extra = sorted(set(tool) - {"type", "function"}) if isinstance(tool, dict) else []
        if extra:
            return (f"Additional properties are not allowed ('{extra[0]}' was unexpected) - 'tools.{t}'",
                    f"tools[{t}]", None)
    return None


@_rule("openai-reasoning-max-tokens", OPENAI_REASONING,
       "https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_tokens")
def _openai_reasoning_max_tokens(model: str, body: dict[str, Any]) -> Problem | None:
    if "max_tokens" in body:
        return ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
    return None


@_rule("openai-reasoning-sampling", OPENAI_REASONING,
       "https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/reasoning#not-supported")
def _openai_reasoning_sampling(model: str, body: dict[str, Any]) -> Problem | None:
    for name in ("temperature", "top_p"):
        if body.get(name) not in (None, 1, 1.0):
            return (f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the default "
                    "(1) value is supported.", name, "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias"):
        if body.get(name) is not None:
            return (f"Unsupported parameter: '{name}' is not supported with this model.", name,
                    "unsupported_parameter")
    return None


@_rule("openai-o-series-efforts", r"^o[1-9]",
       "https://platform.openai.com/docs/api-reference/chat/create#chat-create-reasoning_effort")
def _openai_o_series_efforts(model: str, body: dict[str, Any]) -> Problem | None:
    if body.get("reasoning_effort") not in (None, "low", "medium", "high"):
        return (f"Unsupported value: 'reasoning_effort' does not support {body['reasoning_effort']!r} with this "
                "model. Supported values are: 'low', 'medium', and 'high'.", "reasoning_effort", "unsupported_value")
    return None


@_rule("openai-no-reasoning-effort", OPENAI_NON_REASONING, "https://platform.openai.com/docs/guides/reasoning")
def _openai_no_reasoning_effort(model: str, body: dict[str, Any]) -> Problem | None:
    if body.get("reasoning_effort") is not None:
        return ("Unsupported parameter: 'reasoning_effort' is not supported with this model.", "reasoning_effort",
                "unsupported_parameter")
    return None


@_rule("openai-user-length", OPENAI_MODELS, "https://github.com/maximhq/bifrost/pull/1000")
def _openai_user_length(model: str, body: dict[str, Any]) -> Problem | None:
    user = body.get("user")
    if isinstance(user, str) and len(user) > 64:
        return (f"Invalid 'user': string too long. Expected a string with maximum length 64, but got a string "
                f"with length {len(user)} instead.", "user", "string_above_max_length")
    return None


@_rule("openai-output-limit", OPENAI_MODELS, "https://platform.openai.com/docs/models")
def _openai_output_limit(model: str, body: dict[str, Any]) -> Problem | None:
    limit = next((n for pattern, n in OPENAI_OUTPUT_LIMITS if re.search(pattern, model)), None)
    for name in ("max_completion_tokens", "max_tokens"):
        asked = body.get(name)
        if limit and isinstance(asked, int) and asked > limit:
            return (f"max_tokens is too large: {asked}. This model supports at most {limit} completion tokens, "
                    f"whereas you provided {asked}.", name, "invalid_value")
    return None


OPENAI_RULES = (_openai_unknown_field, _openai_part_properties, _openai_reasoning_max_tokens,
                _openai_reasoning_sampling, _openai_o_series_efforts, _openai_no_reasoning_effort, _openai_user_length, _openai_output_limit)


# ============================================================================================ Anthropic

CLAUDE_NO_THINKING = r"claude-(?:3-5-|3-)(?!7)|claude-(?:2|instant)"
CLAUDE_ONE_SAMPLER = r"claude-(?:(?:sonnet|haiku)-4-[5-6]|opus-4-[1-6])(?!\d)"
CLAUDE_ADAPTIVE_ONLY = r"claude-(?:opus-4-[7-9]|(?:opus|sonnet|haiku)-[5-9]|fable|mythos)"
# The Messages request body (https://docs.claude.com/en/api/messages).
ANTHROPIC_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "tools", "tool_choice", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "thinking", "output_config", "context_management", "service_tier",
    "container", "mcp_servers", "inference_geo",
})
ANTHROPIC_OUTPUT_LIMITS = ((r"claude-3-5-haiku|claude-3-5-sonnet", 8192), (r"claude-3-haiku|claude-3-opus", 4096),
                           (r"claude-opus-4-[01]", 32000), (r"claude-(?:sonnet|haiku)-4|claude-3-7", 64000),
                           (r"claude-opus-4-5", 64000), (r"claude-opus-4-[6-9]", 128000))


@_rule("anthropic-unknown-field", ANY, "https://docs.claude.com/en/api/messages")
def _anthropic_unknown_field(model: str, body: dict[str, Any]) -> Problem | None:
    for name in body:
        if name not in ANTHROPIC_FIELDS:
            return f"{name}: Extra inputs are not permitted", name, None
    return None


@_rule("anthropic-no-thinking", CLAUDE_NO_THINKING,
       "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#supported-models")
def _anthropic_no_thinking(model: str, body: dict[str, Any]) -> Problem | None:
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") != "disabled":
        return f"'{model}' does not support thinking.", "thinking", None
    return None


@_rule("anthropic-one-sampler", CLAUDE_ONE_SAMPLER, "https://docs.claude.com/en/api/messages#body-top-p")
def _anthropic_one_sampler(model: str, body: dict[str, Any]) -> Problem | None:
    if body.get("temperature") is not None and body.get("top_p") is not None:
        return ("`temperature` and `top_p` cannot both be specified for this model. Please use only one.", None, None)
    return None


@_rule("anthropic-adaptive-only", CLAUDE_ADAPTIVE_ONLY,
       "https://platform.claude.com/docs/en/about-claude/models/migration-guide#migrating-to-claude-opus-4-7")
def _anthropic_adaptive_only(model: str, body: dict[str, Any]) -> Problem | None:
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            return f"{name}: this model does not support sampling parameters", name, None
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled":
        return ("thinking.type.enabled is not supported for this model. Use thinking.type.adaptive and "
                "output_config.effort instead.", "thinking", None)
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        return ("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'", None, None)
    return None


@_rule("anthropic-whitespace-text", ANY, "https://docs.claude.com/en/api/messages#body-messages")
def _anthropic_whitespace_text(model: str, body: dict[str, Any]) -> Problem | None:
    system = body.get("system") if isinstance(body.get("system"), list) else []
    blocks = [b for m in body.get("messages") or () if isinstance(m.get("content"), list) for b in m["content"]]
    for block in [*system, *blocks]:
        if isinstance(block, dict) and block.get("type") == "text" and str(block.get("text") or "").isspace():
            return "messages: text content blocks must contain non-whitespace text", None, None
    return None


@_rule("anthropic-output-limit", ANY, "https://docs.claude.com/en/docs/about-claude/models/overview")
def _anthropic_output_limit(model: str, body: dict[str, Any]) -> Problem | None:
    limit = next((n for pattern, n in ANTHROPIC_OUTPUT_LIMITS if re.search(pattern, model)), None)
    asked = body.get("max_tokens")
    if limit and isinstance(asked, int) and asked > limit:
        return (f"max_tokens: {asked} > {limit}, which is the maximum allowed number of output tokens for {model}",
                "max_tokens", None)
    return None


ANTHROPIC_RULES = (_anthropic_unknown_field, _anthropic_no_thinking, _anthropic_one_sampler,
                   _anthropic_adaptive_only, _anthropic_whitespace_text, _anthropic_output_limit)


# =============================================================================================== Gemini

# GenerateContentRequest and GenerationConfig (https://ai.google.dev/api/generate-content).
GEMINI_FIELDS = frozenset({"contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
                           "generationConfig", "cachedContent"})
GENERATION_CONFIG_KEYS = frozenset({
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
    "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
    "thinkingConfig", "imageConfig", "mediaResolution",
})
THINKING_CONFIG_KEYS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
# (lowest budget when thinking, highest, whether 0 turns it off) per family.
GEMINI_BUDGETS = ((r"gemini-2\.5-pro", (128, 32768, False)), (r"gemini-2\.5-flash-lite", (512, 24576, True)),
                  (r"gemini-2\.5-flash", (1, 24576, True)))
GEMINI_OUTPUT_LIMITS = ((r"gemini-2\.5|gemini-3", 65536), (r"gemini-2\.0|gemini-1\.5", 8192))


def _unknown_name(name: str, where: str = "") -> Problem:
    at = f" at '{where}'" if where else ""
    return f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.', None, None


@_rule("gemini-unknown-field", ANY, "https://ai.google.dev/api/generate-content#request-body")
def _gemini_unknown_field(model: str, body: dict[str, Any]) -> Problem | None:
    for name in body:
        if name not in GEMINI_FIELDS:
            return _unknown_name(name)
    config = body.get("generationConfig") or {}
    thinking = config.get("thinkingConfig") or {} if isinstance(config, dict) else {}
    if not isinstance(config, dict) or not isinstance(thinking, dict):
        return "Invalid JSON payload received. generation_config must be an object.", None, None
    for name in config:
        if name not in GENERATION_CONFIG_KEYS:
            return _unknown_name(name, "generation_config")
    for name in thinking:
        if name not in THINKING_CONFIG_KEYS:
            return _unknown_name(name, "generation_config.thinking_config")
    return None


@_rule("gemini-thinking-budget", r"gemini-2\.5", "https://ai.google.dev/gemini-api/docs/thinking#set-budget")
def _gemini_thinking_budget(model: str, body: dict[str, Any]) -> Problem | None:
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
    if "thinkingLevel" in thinking:
        return "Thinking level is not supported for this model.", None, None
    budget = thinking.get("thinkingBudget")
    family = next((v for pattern, v in GEMINI_BUDGETS if re.search(pattern, model)), None)
    if family is None:
        return None
    low, high, can_stop = family
    if budget == 0 and not can_stop:
        return "Budget 0 is invalid. This model only works in thinking mode.", None, None
    if isinstance(budget, int) and budget not in (0, -1) and not low <= budget <= high:
        return (f"thinking_budget is out of range; supported values are integers from {low} to {high}.", None,
                None)
    return None


@_rule("gemini-output-limit", r"gemini-", "https://ai.google.dev/gemini-api/docs/models")
def _gemini_output_limit(model: str, body: dict[str, Any]) -> Problem | None:
    limit = next((n for pattern, n in GEMINI_OUTPUT_LIMITS if re.search(pattern, model)), None)
    asked = (body.get("generationConfig") or {}).get("maxOutputTokens")
    if limit and isinstance(asked, int) and asked > limit:
        return (f"Unable to submit request because it has a maxOutputTokens value of {asked} but the supported "
                f"range is from 1 (inclusive) to {limit + 1} (exclusive). Update the value and try again.", None,
                None)
    return None


# JSON-Schema keys outside Gemini's OpenAPI subset: "Unknown name ... Cannot find field" (field-lessons.md).
REJECTED_SCHEMA_KEYS = frozenset({"additionalProperties", "$schema", "$ref", "$defs", "const", "oneOf", "allOf"})


def schema_problem(schema: Any, where: str) -> str | None:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in REJECTED_SCHEMA_KEYS:
                return f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.'
            if key == "properties" and isinstance(value, dict):
                for name, sub in value.items():
                    found = schema_problem(sub, f"{where}.properties[{name}].value")
                    if found:
                        return found
            elif key == "items":
                found = schema_problem(value, f"{where}.items")
                if found:
                    return found
            elif key == "anyOf" and isinstance(value, list):
                for n, sub in enumerate(value):
                    found = schema_problem(sub, f"{where}.any_of[{n}]")
                    if found:
                        return found
    return None


@_rule("gemini-schema-keys", ANY, "https://ai.google.dev/api/caching#Schema")
def _gemini_schema_keys(model: str, body: dict[str, Any]) -> Problem | None:
    for t, tool in enumerate(body.get("tools") or ()):
        for d, declaration in enumerate(tool.get("functionDeclarations") or ()):
            found = schema_problem(declaration.get("parameters"), f"tools[{t}].function_declarations[{d}].parameters")
            if found:
                return found, None, None
    config = body.get("generationConfig")
    found = schema_problem(config.get("responseSchema"), "generation_config.response_schema") \
        if isinstance(config, dict) else None
    return (found, None, None) if found else None


GEMINI_RULES = (_gemini_unknown_field, _gemini_schema_keys, _gemini_thinking_budget, _gemini_output_limit)
