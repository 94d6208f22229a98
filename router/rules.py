"""What each provider and model family takes: the rules the request shaping applies, as data.

Each rule names where it applies (provider kinds, provider ids, a pattern over the upstream model id), what
it sets on the endpoint's shape (``router/shaping.py``: ``EndpointShape``'s fields) and why, in the provider's
own words, with the page that says so. Rules apply in order; a later rule overrides an earlier one's fields
(``drops`` add up). Nothing here runs per request: ``shape_of`` folds the matching rules into one
``EndpointShape`` per endpoint when the catalog is built.

The catalog's own data comes first (``supported_parameters``, reasoning, output limit from models.dev and
genai-prices, ``router/metadata.py``); these rules say what that data cannot: which spelling of the output
cap a family wants, which pairs of parameters it refuses, which thinking modes it has.

When a test fake must refuse what a provider refuses, ``tests/fakes/strict.py`` holds the fakes' side of
the same facts, with the same sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# OpenAI's reasoning models refuse these unless they hold the default; sampling is fixed for them.
OPENAI_REASONING_REFUSES = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs",
                                      "top_logprobs", "logit_bias"})
# Chat-completions fields the Anthropic Messages API has no equivalent for (its adapter sends none of them).
ANTHROPIC_HAS_NO = frozenset({"seed", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs",
                              "top_logprobs"})
SAMPLING = frozenset({"temperature", "top_p", "top_k"})

# Anthropic's extended-thinking budgets per effort (its minimum is 1024; "high" as in its examples).
ANTHROPIC_EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384}


@dataclass(frozen=True)
class Rule:
    """Where a fact applies and what it sets. ``None`` in a selector means "any"."""

    id: str
    effect: dict[str, Any]
    why: str
    source: str
    kinds: frozenset[str] | None = None  # provider protocol kinds: openai | anthropic | gemini | azure
    providers: frozenset[str] | None = None  # provider ids
    models: re.Pattern[str] | None = None  # searched in the lower-cased upstream model id
    pattern: str = field(default="", repr=False)



def rule(id: str, *, why: str, source: str, kinds: tuple[str, ...] | None = None,
         providers: tuple[str, ...] | None = None, models: str | None = None, **effect: Any) -> Rule:
    return Rule(id=id, effect=effect, why=why, source=source,
                kinds=frozenset(kinds) if kinds is not None else None,
                providers=frozenset(providers) if providers is not None else None,
                models=re.compile(models) if models else None, pattern=models or "")


# OpenAI's reasoning families: the o-series and GPT-5 (not gpt-5-chat, a non-reasoning chat model).
_OPENAI_REASONING = r"^(?:o[1-9]|gpt-5(?!-chat))"
# Claude models that take temperature or top_p but not both: Sonnet/Haiku 4.5, Sonnet 4.6, Opus 4.1–4.6.
_CLAUDE_ONE_SAMPLER = r"claude-(?:(?:sonnet|haiku)-4-[5-6]|opus-4-[1-6])(?!\d)"
# Claude models with no sampling parameters and adaptive-only thinking: Opus 4.7 and later, the 5 family.
_CLAUDE_ADAPTIVE_ONLY = r"claude-(?:opus-4-(?:[7-9])|(?:opus|sonnet|haiku)-[5-9]|fable|mythos)"

RULES: tuple[Rule, ...] = (
    # ---- OpenAI (and Azure OpenAI, which serves the same models under the same API)
    rule("openai-reasoning-output-cap", kinds=("openai", "azure"), providers=("openai", "azure"),
         models=_OPENAI_REASONING, max_tokens_field="max_completion_tokens",
         why="max_tokens is deprecated in favor of max_completion_tokens and is not compatible with o-series "
             "models (400 \"Unsupported parameter: 'max_tokens' is not supported with this model. Use "
             "'max_completion_tokens' instead.\")",
         source="https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_tokens"),
    rule("openai-reasoning-fixed-sampling", kinds=("openai", "azure"), providers=("openai", "azure"),
         models=_OPENAI_REASONING, drops=OPENAI_REASONING_REFUSES,
         why="Not supported with reasoning models: temperature, top_p, presence_penalty, frequency_penalty, "
             "logprobs, top_logprobs, logit_bias (400 \"Unsupported value: 'temperature' does not support 0.5 "
             "with this model. Only the default (1) value is supported.\")",
         source="https://learn.microsoft.com/en-us/azure/ai-foundry/openai/how-to/reasoning#not-supported"),
    rule("openai-o-series-efforts", kinds=("openai", "azure"), providers=("openai", "azure"), models=r"^o[1-9]",
         efforts=("low", "medium", "high"),
         why="o-series models support reasoning_effort low, medium and high; minimal is GPT-5's (400 "
             "\"Unsupported value: 'reasoning_effort' does not support 'minimal' with this model.\")",
         source="https://platform.openai.com/docs/api-reference/chat/create#chat-create-reasoning_effort"),
    rule("openai-user-length", providers=("openai", "azure"), user_max=64,
         why="400 \"Invalid 'user': string too long. Expected a string with maximum length 64\" "
             "(code string_above_max_length); Claude Code's metadata.user_id is ~150 characters",
         source="https://github.com/maximhq/bifrost/pull/1000"),
    rule("openrouter-user-length", providers=("openrouter",), user_max=128,
         why="OpenRouter accepts a user id of at most 128 characters",
         source="https://github.com/ujisati/claude-code-provider-proxy/pull/11"),
    # ---- prompt caching: cache_control in content parts and tools means something only here
    rule("cache-control-openrouter", providers=("openrouter",), cache_control=True,
         why="cache_control breakpoints in content parts are passed to Anthropic and Gemini models",
         source="https://openrouter.ai/docs/features/prompt-caching"),
    rule("cache-control-dashscope", providers=("alibaba",), cache_control=True,
         why="explicit context cache: cache_control {type: ephemeral} inside a content block (OpenAI-compatible "
             "mode)",
         source="https://help.aliyun.com/zh/model-studio/context-cache"),
    # ---- Anthropic Messages
    rule("anthropic-messages", kinds=("anthropic",), cache_control=True, requires_cap=True,
         thinking="budget", budget_below_cap=True, budget_range=(1024, None),
         effort_budgets=ANTHROPIC_EFFORT_BUDGETS, drops=ANTHROPIC_HAS_NO,
         why="max_tokens is required; thinking.budget_tokens must be >= 1024 and less than max_tokens; the "
             "Messages API has no seed, penalties, logit_bias or logprobs",
         source="https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"),
    rule("anthropic-one-sampler", kinds=("anthropic",), models=_CLAUDE_ONE_SAMPLER, one_sampler=True,
         why="You should either alter temperature or top_p, but not both (400 \"`temperature` and `top_p` cannot "
             "both be specified for this model. Please use only one.\" on Sonnet/Haiku 4.5, Opus 4.1 and later)",
         source="https://docs.claude.com/en/api/messages#body-top-p"),
    rule("anthropic-adaptive-only", kinds=("anthropic",), models=_CLAUDE_ADAPTIVE_ONLY, drops=SAMPLING,
         thinking="adaptive", budget_below_cap=False, efforts=("low", "medium", "high"),
         why="Opus 4.7 and later: temperature, top_p and top_k are removed and thinking.budget_tokens is "
             "refused; thinking is {type: adaptive} with output_config.effort",
         source="https://platform.claude.com/docs/en/about-claude/models/migration-guide#migrating-to-claude-opus-4-7"),
    # ---- Gemini
    rule("gemini-thinking", kinds=("gemini",), thinking="budget",
         why="thought tokens count against maxOutputTokens, so a thinking budget never raises the output cap",
         source="https://github.com/googleapis/python-genai/issues/2062"),
    rule("gemini-2.5-pro-always-thinks", kinds=("gemini",), models=r"gemini-2\.5-pro", thinking_off=False,
         budget_range=(128, 32768),
         why="The thinkingBudget must be an integer in the range 128 to 32768. You cannot turn thinking off "
             "when using Gemini 2.5 Pro (400 \"Budget 0 is invalid. This model only works in thinking mode.\")",
         source="https://ai.google.dev/gemini-api/docs/thinking#set-budget"),
    rule("gemini-2.5-flash-budget", kinds=("gemini",), models=r"gemini-2\.5-flash(?!-lite)",
         budget_range=(1, 24576),
         why="Gemini 2.5 Flash: thinkingBudget 0 to 24576 (0 turns thinking off)",
         source="https://ai.google.dev/gemini-api/docs/thinking#set-budget"),
    rule("gemini-2.5-flash-lite-budget", kinds=("gemini",), models=r"gemini-2\.5-flash-lite",
         budget_range=(512, 24576),
         why="Gemini 2.5 Flash-Lite: thinkingBudget 512 to 24576 (0 turns thinking off)",
         source="https://ai.google.dev/gemini-api/docs/thinking#set-budget"),
    rule("gemini-3-levels", kinds=("gemini",), models=r"gemini-3", thinking_off=False,
         why="Gemini 3 thinks in levels and cannot turn thinking off",
         source="https://ai.google.dev/gemini-api/docs/thinking#thinking-levels"),
)

# Whether a model reasons comes from the catalog (models.dev's ``reasoning`` flag, as ``supported_parameters``
# ``reasoning``), not from a rule: a model without it gets no reasoning fields at all, e.g. OpenAI's
# "Unsupported parameter: 'reasoning_effort' is not supported with this model" for gpt-4o-mini, and
# Anthropic's "'claude-3-5-haiku-20241022' does not support thinking."
REASONING_SOURCES = (
    "https://platform.openai.com/docs/guides/reasoning",
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#supported-models",
)
