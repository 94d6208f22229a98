"""Admission: who may make this request (API keys, anonymous free use, per-IP and per-key limits).

The decision itself is api/access/check.py; this module binds it to a live request: the gateway's Redis, the
client address as far as the trusted proxies vouch for it, and the response headers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from starlette.requests import Request

from api.access.check import (AccessCheck, AccessContext, AccessResult, bearer_token, build_access_context, prepare_access,
                        presented_key)
from common.errors import GatewayError
from api.access.client_ip import client_ip

if TYPE_CHECKING:
    from api.gateway import Gateway

# One AccessContext per Gateway (its key cache and registered Lua script), built on first use.
_contexts: "weakref.WeakKeyDictionary[Gateway, AccessContext]" = weakref.WeakKeyDictionary()


@dataclass
class Admission:
    key_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the response
    reserved: Decimal | None = None  # USD held against the key's budget (settled by the worker)


def access_context(gateway: "Gateway") -> AccessContext:
    ctx = _contexts.get(gateway)
    if ctx is None:
        ctx = _contexts[gateway] = build_access_context(gateway.redis, gateway.names)
    return ctx


def request_client_ip(request: Request, trusted_hops: int) -> str | None:
    peer = request.client.host if request.client else None
    return client_ip(peer, request.headers.getlist("x-forwarded-for"), trusted_hops)


def authorization(request: Request) -> str | None:
    """The ``Authorization`` header, or an ``x-api-key`` as a bearer token: Anthropic clients (Claude Code
    with ``ANTHROPIC_API_KEY``) send the key there."""
    header = request.headers.get("authorization")
    if header is None and (api_key := request.headers.get("x-api-key")):
        return "Bearer " + api_key
    return header


async def prepare(gateway: "Gateway", request: Request, *, model_is_free: bool,
                  worst_case: Callable[[], Decimal] | None = None) -> AccessCheck:
    """Everything of the request's admission short of the limit script: refuses (``GatewayError``) an
    unknown key, a paid model without one, an unknown client address; else the check to ``run``."""
    limits = gateway.settings.limits
    check = await prepare_access(
        access_context(gateway),
        authorization_header=authorization(request),
        model_is_free=model_is_free,
        client_ip=request_client_ip(request, limits.trusted_proxy_hops),
        limits=limits,
        signup_url=gateway.settings.signup_url,
        worst_case=worst_case,
        reserve_ttl=int(gateway.settings.request_timeout) + 60,
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
    return Admission(key_id=result.key.id if result.key else None, headers=result.headers,
                     reserved=result.reserved)


def refused(result: AccessResult) -> GatewayError:
    assert result.error is not None
    result.error.headers = {**result.headers, **result.error.headers}
    return result.error


async def admit(gateway: "Gateway", request: Request, *, model_is_free: bool,
                worst_case: Callable[[], Decimal] | None = None) -> Admission:
    """Let the request in now, or raise ``GatewayError``."""
    check = await prepare(gateway, request, model_is_free=model_is_free, worst_case=worst_case)
    return admitted(await check.run())


async def refuse_unknown_key(gateway: "Gateway", request: Request, error: GatewayError) -> GatewayError:
    """The refusal for a request that cannot be planned: 401 if it sent an unknown or revoked key (that
    answer comes first, so a mistyped key on ``auto-free`` is never a 503), else ``error``."""
    _, key_error = await presented_key(access_context(gateway), bearer_token(request.headers.get("authorization")))
    return key_error if key_error is not None and key_error.status == 401 else error
