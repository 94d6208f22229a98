"""What passes through to a provider, as data: request fields, ``anthropic-beta`` values, server tools.

Forwarding is by allow-list. A field a provider's API documents goes through; a field nobody listed is not
sent (an unknown field is a 400 at OpenAI, and an unlisted feature may spend the operator's money). A local
server (the operator's own machine) gets every field: it bills nothing and may take any extension.

Anything that changes the price of a request is refused with a 400 naming it, for every model (free models
never get paid extras; the gateway's cost and budget reservation know token prices only):

- OpenAI's ``service_tier`` ``priority`` (and ``scale``): billed above the list price;
- OpenAI's ``web_search_options`` and OpenRouter's ``plugins`` (``web`` is billed per result);
- Anthropic's server tools billed per container hour (``code_execution_*``) or not known here, the
  ``container`` and ``mcp_servers`` fields, and betas that change the price (``context-1m-*``: long context
  at a higher rate).

Anthropic's ``web_search`` server tool is priced instead (Claude Code's WebSearch tool asks for it): with
its ``max_uses`` bound, admission reserves ``max_uses`` × the per-search price on top of the tokens, and
``Catalog.cost`` bills the searches the answer reports (``usage.server_tool_use.web_search_requests``).
Without ``max_uses`` (unbounded), or on a free model, it is refused with a 400 naming it.

``anthropic-beta`` values Claude Code and the SDKs send (prompt caching, interleaved thinking, context
management, effort, …) pass; unknown ones are left out rather than refused, so a client that adds a beta
keeps working (the feature is simply not switched on upstream).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from common.errors import GatewayError

# OpenAI Chat Completions request body (https://platform.openai.com/docs/api-reference/chat/create), plus the
# canonical ``reasoning`` object the adapter turns into ``reasoning_effort``. Left out on purpose: ``store``
# and ``metadata`` (they would keep users' conversations in the operator's OpenAI account), ``prediction``
# (rejected prediction tokens are billed), ``audio``/``modalities`` (audio output is billed at audio rates the
# catalog does not price); ``service_tier`` passes only below the list price (see PRICED_SERVICE_TIERS).
OPENAI_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "n", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "user", "safety_identifier", "prompt_cache_key", "seed", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "reasoning_effort", "verbosity", "functions", "function_call", "service_tier",
    "reasoning",
})
# Sampling extensions the open-model hosts of the OpenAI-compatible family document (vLLM, Together,
# Fireworks, DeepInfra, Groq, OpenRouter…): harmless where unknown, and honoured where known.
COMPAT_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "top_a", "include_reasoning"})
# OpenRouter's own fields (https://openrouter.ai/docs/api-reference/parameters), ``plugins`` checked below.
OPENROUTER_EXTRAS = frozenset({"reasoning", "usage", "transforms", "plugins", "verbosity"})

# Anthropic Messages request body (https://docs.claude.com/en/api/messages), as passed through natively.
ANTHROPIC_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "tools", "tool_choice", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "thinking", "output_config", "context_management", "service_tier",
})
# Tools Anthropic defines but the client runs (no per-use charge): they pass like custom tools.
ANTHROPIC_CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")

# ``anthropic-beta`` values that pass (https://docs.claude.com/en/api/beta-headers; Claude Code's list in
# reference/agent-clients.md).
ANTHROPIC_BETAS = frozenset({
    "claude-code-20250219", "interleaved-thinking-2025-05-14", "thinking-token-count-2026-05-13",
    "context-management-2025-06-27", "prompt-caching-scope-2026-01-05", "mid-conversation-system-2026-04-07",
    "effort-2025-11-24", "prompt-caching-2024-07-31", "extended-cache-ttl-2025-04-11",
    "token-efficient-tools-2025-02-19", "fine-grained-tool-streaming-2025-05-14", "output-128k-2025-02-19",
    "structured-outputs-2025-11-13", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "oauth-2025-04-20",
})

# What changes the price: refused with a 400 naming it. (field or value prefix, why)
PRICED_SERVICE_TIERS = {"priority": "priority processing is billed above the list price",
                        "scale": "the scale tier is billed by reserved capacity"}
PRICED_BETAS = {"context-1m-": "the 1M-token context window is billed at a higher rate above 200k tokens",
                "code-execution-": "code execution is billed per container hour",
                "mcp-client-": "the MCP connector calls remote servers on the operator's account",
                "files-api-": "files are stored on the operator's account"}
PRICED_SERVER_TOOLS = {"code_execution_": "code execution is billed per container hour"}
# Server tools billed per use, priced here (USD per use): tool type prefix -> (price, the usage count's name).
# Anthropic: "$10 per 1,000 searches" (https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool).
PRICED_PER_USE = {"web_search_": (Decimal("0.01"), "web_search_requests")}
PRICED_FIELDS = {"web_search_options": "web search is billed per call",
                 "container": "code execution containers are billed per hour",
                 "mcp_servers": "the MCP connector calls remote servers on the operator's account"}
ALLOWED_PLUGINS: frozenset[str] = frozenset()  # OpenRouter's ``web`` plugin is billed per result

_LOCAL_KINDS_ALL = None  # fields_for's answer for "every field"


def fields_for(kind: str, provider: str, local: bool = False) -> frozenset[str] | None:
    """The top-level canonical fields forwarded to this provider; None: all (the adapter builds its own body
    from the fields it knows, or the server is the operator's own)."""
    if kind not in ("openai", "azure") or local:
        return _LOCAL_KINDS_ALL
    if provider in ("openai", "azure"):
        return OPENAI_FIELDS
    if provider == "openrouter":
        return OPENAI_FIELDS | COMPAT_EXTRAS | OPENROUTER_EXTRAS
    return OPENAI_FIELDS | COMPAT_EXTRAS


def _refused(param: str, why: str) -> GatewayError:
    return GatewayError("invalid_request", f"'{param}' is not available through this gateway: {why}.",
                        param=param)


def refuse_priced(body: Mapping[str, Any]) -> None:
    """A 400 naming the first field of a chat (canonical) request that would change its price."""
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in PRICED_SERVICE_TIERS:
        raise _refused("service_tier", PRICED_SERVICE_TIERS[tier])
    for name, why in PRICED_FIELDS.items():
        if body.get(name) is not None:
            raise _refused(name, why)
    plugins = body.get("plugins")
    if plugins is not None:
        for n, plugin in enumerate(plugins if isinstance(plugins, list) else [plugins]):
            plugin_id = plugin.get("id") if isinstance(plugin, dict) else plugin
            if plugin_id not in ALLOWED_PLUGINS:
                raise _refused(f"plugins[{n}].id", f"the {plugin_id!r} plugin is billed on the operator's "
                               "account (web search is billed per result)")


def server_tools_worst_case(tools: Iterable[Any] | None, *, free: bool) -> Decimal:
    """The most a Messages request's server tools can add to its price (what admission reserves on top of
    the tokens); a 400 naming the first server tool that is not let through: unknown or billed by the hour,
    billed per use without a ``max_uses`` bound, or any priced one on a free model."""
    worst = Decimal(0)
    for n, tool in enumerate(tools or ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind == "custom" or kind.startswith(ANTHROPIC_CLIENT_TOOLS):
            continue
        per_use = next((price for prefix, (price, _) in PRICED_PER_USE.items() if kind.startswith(prefix)), None)
        if per_use is not None and not free:
            uses = tool.get("max_uses")
            if not isinstance(uses, int) or isinstance(uses, bool) or uses < 1:
                raise _refused(f"tools[{n}].max_uses", f"{kind!r} is billed per use: bound it with max_uses")
            worst += per_use * uses
            continue
        if per_use is not None:
            raise _refused(f"tools[{n}].type", f"{kind!r} is billed per use, which free models never get")
        why = next((why for prefix, why in PRICED_SERVER_TOOLS.items() if kind.startswith(prefix)),
                   "server tools other than the client-run ones (bash, text editor, computer, memory) are not "
                   "forwarded")
        raise _refused(f"tools[{n}].type", f"{kind!r}: {why}")
    return worst


def per_use_cost(usage: Mapping[str, Any]) -> Decimal:
    """USD for the server tool uses an answer reports (canonical ``usage.server_tool_use``)."""
    uses = usage.get("server_tool_use")
    if not isinstance(uses, dict):
        return Decimal(0)
    total = Decimal(0)
    for price, name in PRICED_PER_USE.values():
        count = uses.get(name)
        if isinstance(count, int) and count > 0:
            total += price * count
    return total


def anthropic_betas(header: str | None, *, refuse: bool = True) -> str | None:
    """The client's ``anthropic-beta`` header reduced to the values that pass; a 400 for a priced one
    (``refuse=False``: left out too, for a call that costs nothing, like counting tokens)."""
    if not header:
        return None
    kept = []
    for value in (v.strip() for v in header.split(",")):
        for prefix, why in PRICED_BETAS.items():
            if value.startswith(prefix) and refuse:
                raise _refused(f"anthropic-beta: {value}", why)
        if value in ANTHROPIC_BETAS:
            kept.append(value)
    return ",".join(kept) or None


def native_messages_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages body with only the fields Anthropic's API documents (priced ones were refused before)."""
    return {k: v for k, v in body.items() if k in ANTHROPIC_FIELDS}
