"""Admission: who may make this request (API keys, anonymous free use, per-IP and per-key limits).

The decision itself is api/access/check.py; this module binds it to a live request: the gateway's Redis, the
client address as far as the trusted proxies vouch for it, and the response headers.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from starlette.requests import Request

from api.access.check import (AccessCheck, AccessContext, AccessResult, Caller, build_access_context, count_refusal,
                              identify, prepare_access)
from common.errors import GatewayError
from common.settlement import settle_by_ms
from api.access.client_ip import client_ip

if TYPE_CHECKING:
    from api.gateway import Gateway

# One AccessContext per Gateway (its key cache and registered Lua script), built on first use.
_contexts: "weakref.WeakKeyDictionary[Gateway, AccessContext]" = weakref.WeakKeyDictionary()


@dataclass
class Admission:
    key_id: str | None = None
    account: str | None = None  # the key's owner (a signed-in user), whose usage totals the worker keeps
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the response
    reserved: Decimal | None = None  # USD held against the key's budget (settled by the worker)
    credit_reserved: int | None = None  # nanodollars held against the owner's credits (settled likewise)


def access_context(gateway: "Gateway") -> AccessContext:
    ctx = _contexts.get(gateway)
    if ctx is None:
        ctx = _contexts[gateway] = build_access_context(gateway.redis, gateway.names)
    return ctx


def request_client_ip(request: Request, trusted_hops: int) -> str | None:
    peer = request.client.host if request.client else None
    return client_ip(peer, request.headers.getlist("x-forwarded-for"), trusted_hops)


def authorization(request: Request, *, query_key: bool = False) -> str | None:
    """The ``Authorization`` header, or the key of the other protocols as a bearer token: ``x-api-key``
    (Anthropic clients, Claude Code with ``ANTHROPIC_API_KEY``), ``x-goog-api-key`` (the Gemini SDKs and
    Gemini CLI) and, where the route says so (``query_key``), Gemini's ``?key=``."""
    header = request.headers.get("authorization")
    if header is None:
        api_key = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
        if not api_key and query_key:
            api_key = request.query_params.get("key")
        if api_key:
            return "Bearer " + api_key
    return header


async def caller_of(gateway: "Gateway", request: Request, *, query_key: bool = False) -> Caller:
    """Who sends ``request``, before anything of it is read or planned (``api/access/check.py``);
    ``query_key``: the route takes the key from ``?key=`` too (Gemini's API)."""
    limits = gateway.settings.limits
    return await identify(access_context(gateway),
                          authorization_header=authorization(request, query_key=query_key),
                          client_ip=request_client_ip(request, limits.trusted_proxy_hops), limits=limits,
                          signup_url=gateway.settings.signup_url)


async def prepare(gateway: "Gateway", caller: Caller, *, model_is_free: bool,
                  worst_case: Callable[[], Decimal] | None = None, request_id: str = "",
                  deadline: float | None = None) -> AccessCheck:
    """Everything of the request's admission short of the limit script: refuses (``GatewayError``) an
    unknown key, a paid model without one, an unknown client address; else the check to ``run``.

    A reservation is held under ``request_id`` until the request's ``deadline`` (epoch seconds) plus
    the settlement's grace (``common/settlement.py``)."""
    check = await prepare_access(
        access_context(gateway),
        caller=caller,
        model_is_free=model_is_free,
        limits=gateway.settings.limits,
        signup_url=gateway.settings.signup_url,
        worst_case=worst_case,
        request_id=request_id,
        hold_until_ms=settle_by_ms(deadline if deadline is not None else time.time() + gateway.settings.request_timeout),
        topup_url=gateway.settings.profile_url,
    )
    if isinstance(check, AccessResult):
        raise refused(check)
    return check


def admitted(result: AccessResult) -> Admission:
    """The admission of a checked request, or its refusal raised (``GatewayError``: 401/402/429/503 in the
    documented envelope). The ``X-RateLimit-*`` headers of the limits that applied go on the response
    either way."""
    if result.error is not None:
        raise refused(result)
    return Admission(key_id=result.key.id if result.key else None,
                     account=result.key.owner if result.key else None, headers=result.headers,
                     reserved=result.reserved, credit_reserved=result.credit_reserved)


def refused(result: AccessResult) -> GatewayError:
    assert result.error is not None
    result.error.headers = {**result.headers, **result.error.headers}
    return result.error


NOT_COUNTED = frozenset({"rate_limit_exceeded", "promotion_limit_reached", "budget_exceeded", "insufficient_credits",
                         "missing_client_ip", "temporarily_unavailable"})


async def counted_refusal(gateway: "Gateway", caller: Caller, error: GatewayError) -> GatewayError:
    """A refusal that came before the request's limit script, counted against the caller's own limits: the
    429 once they are used up, else ``error``. Refusals by the limits themselves, for want of a client
    address or of Redis count nothing."""
    if error.error_type in NOT_COUNTED:
        return error
    limited = await count_refusal(access_context(gateway), caller, gateway.settings.limits)
    return limited or error
