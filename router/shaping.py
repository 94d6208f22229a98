"""How the canonical request (the OpenAI chat body, ``Job.body``) becomes what one endpoint takes.

One place decides, per endpoint, from the catalog's data (supported parameters, reasoning, output limit) and
the provider and family rules (``router/rules.py``, each with its source):

- ``EndpointShape``: the facts of one endpoint, folded once when the catalog is built (``shape_of``), so a
  request pays dictionary lookups only;
- ``output_plan``: the output cap the adapter will send, the thinking budget, and how many answers the
  request asks for. The one computation of a request's output: admission reserves for it
  (``api/access/worst_case.py`` ``worst_case_cost``) and the worker sends it (``shape_request``, and the
  Anthropic adapter), so the reservation always covers what is sent;
- ``shape_request``: the canonical body made acceptable to that endpoint, in place. What the client asked
  for implicitly (an agent's default effort, sampling a reasoning model ignores) is adapted or dropped
  silently, as OpenRouter does; a client that wants an endpoint to honour a parameter says
  ``provider.require_parameters`` and the plan keeps only endpoints that take it (``router/preferences.py``,
  which reads the same ``supported_parameters`` this module trims).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from router.forwarding import fields_for
from router.model import Model
from router.rules import RULES, Rule

EFFORTS = ("minimal", "low", "medium", "high")
ANSWER_ROOM = 1024  # tokens kept for the answer when the cap must be raised above a thinking budget
DEFAULT_OUTPUT = 4096  # the output reserved and sent when neither the client nor the catalog gives a cap
MIN_DEFAULT_CAP = 256  # a default cap clipped to what fits the context never goes below this
REASONING_FIELDS = ("reasoning", "reasoning_effort", "include_reasoning", "thinking")


@dataclass(frozen=True)
class EndpointShape:
    """What one endpoint takes. Built once per endpoint; every field is read with a dictionary hit."""

    kind: str = "openai"  # the provider's protocol: openai | anthropic | gemini | azure
    output_limit: int | None = None  # the model's maximum output (catalog)
    context_length: int | None = None
    reasoning: bool = True  # False: the catalog knows this model does not reason; reasoning fields go
    drops: frozenset[str] = frozenset()  # top-level fields this endpoint refuses: never sent
    max_tokens_field: str | None = None  # the spelling of the output cap it wants (None: as the client sent)
    requires_cap: bool = False  # the provider requires an output cap (Anthropic's max_tokens)
    user_max: int | None = None  # longest ``user`` it accepts
    cache_control: bool = False  # takes cache_control in content parts and tools
    one_sampler: bool = False  # temperature or top_p, not both
    thinking: str = ""  # how it reasons: "" (as its adapter does), "budget" (a token budget), "adaptive"
    thinking_off: bool = True  # reasoning can be turned off
    budget_below_cap: bool = False  # the thinking budget lies inside the output cap, which must exceed it
    budget_range: tuple[int, int | None] | None = None  # (lowest, highest) thinking budget it accepts
    effort_budgets: Mapping[str, int] | None = None  # effort -> budget where it thinks in budgets
    efforts: tuple[str, ...] | None = None  # the reasoning efforts it takes (None: every one of EFFORTS)
    fields: frozenset[str] | None = None  # top-level fields forwarded (router/forwarding.py); None: all
    rules: tuple[str, ...] = field(default=(), compare=False)  # ids of the rules that made it (for tests, logs)


def shape_of(model: Model, kind: str, local: bool = False) -> EndpointShape:
    """The endpoint's shape: its catalog data, then every rule that applies, in order."""
    known = bool(model.supported_parameters)
    return _apply_rules({"kind": kind, "output_limit": model.max_output_tokens,
                         "context_length": model.context_length,
                         "reasoning": (not known) or "reasoning" in model.supported_parameters,
                         "fields": fields_for(kind, model.provider, local)},
                        kind, model.provider, model.upstream_id.lower())


def kind_shape(kind: str, provider: str = "") -> EndpointShape:
    """The shape every model of a protocol shares (rules without a model pattern): for adapters called
    without a catalog entry (unit tests, pass-through ids)."""
    return _apply_rules({"kind": kind, "fields": fields_for(kind, provider)}, kind, provider, "")


@functools.lru_cache(maxsize=512)
def _rules_for(kind: str, provider: str) -> tuple[Rule, ...]:
    return tuple(r for r in RULES if (r.kinds is None or kind in r.kinds)
                 and (r.providers is None or provider in r.providers))


def _apply_rules(fields: dict[str, Any], kind: str, provider: str, upstream_id: str) -> EndpointShape:
    drops: frozenset[str] = frozenset()
    applied = []
    for rule in _rules_for(kind, provider):
        if rule.models is not None and (not upstream_id or rule.models.search(upstream_id) is None):
            continue
        applied.append(rule.id)
        for name, value in rule.effect.items():
            if name == "drops":
                drops |= value
            else:
                fields[name] = value
    return EndpointShape(drops=drops, rules=tuple(applied), **fields)


def supported_parameters(model: Model, shape: EndpointShape) -> tuple[str, ...]:
    """The catalog's supported parameters less what the rules say this endpoint refuses."""
    if not shape.drops:
        return model.supported_parameters
    return tuple(p for p in model.supported_parameters if p not in shape.drops)


# ------------------------------------------------------------------------------------- what was asked


@dataclass(frozen=True)
class Reasoning:
    """The reasoning a request asks for. ``effort`` is None when only a token budget (or nothing) was given."""

    effort: str | None = None
    max_tokens: int | None = None
    exclude: bool = False


def requested(body: Mapping[str, Any]) -> Reasoning | None:
    """The reasoning the request asks for, or None (not asked, or explicitly disabled).

    Reads OpenRouter's ``reasoning`` object, the flat ``reasoning_effort`` and Anthropic's own ``thinking``
    object (a chat client may send it for a Claude model), so that every reader sees one answer.
    """
    raw = body.get("reasoning")
    flat = body.get("reasoning_effort")
    if not isinstance(raw, dict):
        raw = {}
    thinking = body.get("thinking")
    if not raw and isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind == "disabled":
            return None
        if kind in ("enabled", "adaptive"):
            raw = {"enabled": True}
            if isinstance(thinking.get("budget_tokens"), int):
                raw["max_tokens"] = thinking["budget_tokens"]
    if raw.get("enabled") is False or raw.get("effort") == "none" or flat == "none":
        return None
    effort = raw.get("effort") if raw.get("effort") in EFFORTS else flat if flat in EFFORTS else None
    budget = raw.get("max_tokens") if isinstance(raw.get("max_tokens"), int) and raw["max_tokens"] > 0 else None
    if effort is None and budget is None and not raw.get("enabled") and not raw.get("exclude"):
        return None
    if effort is None and budget is None:
        effort = "medium"  # enabled without a size: the providers' own default
    return Reasoning(effort=effort, max_tokens=budget, exclude=bool(raw.get("exclude")))


def disabled(body: Mapping[str, Any]) -> bool:
    """The request turns reasoning off explicitly (``enabled: false``, effort ``none``, thinking disabled)."""
    raw = body.get("reasoning")
    thinking = body.get("thinking")
    return ((isinstance(raw, dict) and (raw.get("enabled") is False or raw.get("effort") == "none"))
            or body.get("reasoning_effort") == "none"
            or (isinstance(thinking, dict) and thinking.get("type") == "disabled"))


def asked_cap(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def choices(body: Mapping[str, Any]) -> int:
    """How many answers the upstream generates and bills: ``n``, or ``best_of`` where a server honours it."""
    most = 1
    for name in ("n", "best_of"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            most = value
    return most


# ------------------------------------------------------------------------------------- the output plan


class OutputPlan(NamedTuple):
    """What a request may make an endpoint generate, as the adapter will ask for it."""

    cap: int | None  # the output cap sent; None: none is sent and the model's own limit applies
    budget: int | None  # the thinking budget sent, where the endpoint thinks in budgets inside the cap
    choices: int  # answers generated (n, best_of)

    def worst_output(self, fallback: int) -> int:
        """Output tokens billed at most: every answer at the cap (``fallback`` when no cap is sent)."""
        return (self.cap or fallback) * self.choices


def default_cap(shape: EndpointShape, prompt_tokens: int, default: int = DEFAULT_OUTPUT) -> int:
    """The cap sent when the client gives none and the provider needs one: the model's real output limit,
    clipped so prompt plus output fits its context, instead of a fixed number that truncates answers."""
    limit = shape.output_limit
    if not limit:
        return default
    if shape.context_length:
        return max(MIN_DEFAULT_CAP, min(limit, shape.context_length - prompt_tokens))
    return limit


def output_plan(shape: EndpointShape, body: Mapping[str, Any], prompt_tokens: int = 0,
                default: int | None = None) -> OutputPlan:
    """The output cap, thinking budget and answer count this endpoint gets for ``body``.

    The cap is the client's (clipped to the model's output limit: Claude Code asks 32,000 of every model),
    else the default where the provider requires one (or ``default`` is given: a reserved request to a model
    whose limit is unknown), else none. Where the thinking budget lies inside the cap (Anthropic), the cap is
    raised above the budget, within the model's limit. Pure, and stable: the plan of a body already shaped
    by its own plan is the same plan.
    """
    limit = shape.output_limit
    cap = asked_cap(body)
    if cap is not None:
        cap = min(cap, limit) if limit else cap
    elif shape.requires_cap or default is not None:
        cap = default_cap(shape, prompt_tokens, default or DEFAULT_OUTPUT)
    budget = None
    wanted = requested(body) if shape.reasoning and shape.thinking == "budget" else None
    if wanted is not None:
        budget = wanted.max_tokens
        if budget is None and shape.effort_budgets:
            budget = shape.effort_budgets.get(wanted.effort or "medium")
        if budget is not None:
            low, high = shape.budget_range or (1, None)
            budget = max(low, min(budget, high) if high else budget)
            if shape.budget_below_cap and (cap is None or cap <= budget):
                # raised above the budget with room for the answer, within the model's limit
                cap = budget + ANSWER_ROOM if not limit else min(budget + ANSWER_ROOM, limit)
                budget = max(low, min(budget, cap - ANSWER_ROOM))
    return OutputPlan(cap, budget, choices(body))


# ------------------------------------------------------------------------------------- shaping the body


def shape_request(shape: EndpointShape, body: dict[str, Any], *, prompt_tokens: int = 0,
                  reserved_default: int | None = None, cache_control: bool = True) -> OutputPlan:
    """Make ``body`` (the canonical request, a private copy) what this endpoint takes; returns its plan.

    ``reserved_default``: the cap admission reserved for when nothing else bounds the output (a budgeted
    request to a model whose limit is unknown): sent, so the reservation covers the answer.
    ``cache_control``: whether the body may carry ``cache_control`` at all (the caller knows from the raw
    bytes, so most requests skip the walk over their messages).
    """
    if shape.fields is not None:
        for name in [n for n in body if n not in shape.fields]:
            del body[name]
    for name in shape.drops:
        body.pop(name, None)
    if not shape.reasoning or (not shape.thinking_off and disabled(body)):
        for name in REASONING_FIELDS:  # not taken, or cannot be turned off: the model's own default
            body.pop(name, None)
    if shape.one_sampler and "temperature" in body and "top_p" in body:
        del body["top_p"]  # the client's temperature wins; the model refuses the pair
    if shape.efforts is not None:
        _fit_effort(body, shape.efforts)
    plan = output_plan(shape, body, prompt_tokens, reserved_default)
    _write_cap(shape, body, plan.cap)
    if plan.budget is not None:
        asked = requested(body)
        body.pop("thinking", None)
        body.pop("reasoning_effort", None)
        body["reasoning"] = {"max_tokens": plan.budget, "exclude": bool(asked and asked.exclude)}
    user = body.get("user")
    if shape.user_max and isinstance(user, str) and len(user) > shape.user_max:
        body["user"] = short_user(user, shape.user_max)
    if not shape.cache_control and cache_control:
        strip_cache_control(body)
    return plan


def _fit_effort(body: dict[str, Any], efforts: tuple[str, ...]) -> None:
    """An effort this endpoint does not take becomes the nearest one it does, upwards first (o3 has no
    ``minimal``: it gets ``low``)."""
    def fit(effort: Any) -> Any:
        if effort not in EFFORTS or effort in efforts:
            return effort
        above = EFFORTS[EFFORTS.index(effort):]
        return next((e for e in above if e in efforts), efforts[-1])

    if "reasoning_effort" in body:
        body["reasoning_effort"] = fit(body["reasoning_effort"])
    raw = body.get("reasoning")
    if isinstance(raw, dict) and "effort" in raw:
        body["reasoning"] = {**raw, "effort": fit(raw["effort"])}


def _write_cap(shape: EndpointShape, body: dict[str, Any], cap: int | None) -> None:
    name = shape.max_tokens_field or ("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens")
    body.pop("max_tokens", None)
    body.pop("max_completion_tokens", None)
    if cap is not None:
        body[name] = cap


def short_user(user: str, limit: int) -> str:
    """A stable end-user id within ``limit`` characters: the same long id always maps to the same short one
    (providers use it to attribute abuse, so it must stay distinct and stable, not truncated)."""
    return hashlib.sha256(user.encode()).hexdigest()[:limit]


def strip_cache_control(body: dict[str, Any]) -> None:
    """``cache_control`` off content parts, messages and tools, for an endpoint that does not take it."""
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        message.pop("cache_control", None)
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    part.pop("cache_control", None)
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            tool.pop("cache_control", None)


def joined_details(details: list[Any]) -> list[dict[str, Any]]:
    """Canonical ``reasoning_details`` with the streamed pieces of one ``index`` joined in order: texts
    concatenate, the signature (which arrives last) is kept. For the adapters reading what a client sent
    back, and for the wire formats that carry a stream's reasoning to the client in one piece (Gemini's)."""
    joined: list[dict[str, Any]] = []
    by_index: dict[Any, dict[str, Any]] = {}
    for detail in details:
        if not isinstance(detail, dict):
            continue
        index = detail.get("index")
        same = by_index.get(index) if index is not None else None
        if same is None or same.get("type") != detail.get("type"):
            entry = dict(detail)
            joined.append(entry)
            if index is not None:
                by_index[index] = entry
            continue
        for name in ("text", "data", "summary"):
            if isinstance(detail.get(name), str):
                same[name] = (same.get(name) or "") + detail[name]
        if detail.get("signature"):
            same["signature"] = detail["signature"]
    return joined
