"""Who may make this request: the decision the model routes ask before enqueueing anything.

Admission comes in two steps. First, before the body is read or planned (before any catalog search),
``identify`` says who calls: a key sent but unknown or revoked is refused, a keyless caller without a
client address too, and a caller this process already saw use up its limit for the window (its key's
rpm; without a valid key, its IP's per-minute limit or day allowance) is refused at once, without a Redis
call (``Limiter.refused_early``). Then, once the request is planned, the decision table:

1. a key was sent but is unknown or revoked   → 401 authentication_required (free model or not)
2. the client IP is needed but unknown        → 400 missing_client_ip
3. no key, paid model                         → 401 paid_model_auth_required
4. the limits that apply, in one Redis call:
   - anonymous, free model: per-IP day allowance (401 promotion_limit_reached), then per-IP minute (429)
   - key, free model: per-IP minute (429) — "per client IP, anonymous or not" — and the key's rpm (429);
     a signed-in user's key also the account's day allowance (429), larger than the anonymous one
   - key, paid model: the key's rpm (429) and monthly budget (402 budget_exceeded); a signed-in user's
     key also the account's prepaid credits (402 insufficient_credits: the worst case is held against the
     balance, ``common/ledger.py``). Operator keys (no owner) spend no credits.
   - a request admitted with its job (``AccessCheck.run(leased=True)``): its bounds on requests in flight
     first (429, ``Retry-After: 1``; nothing else counted): its key's and its account's, or the one all
     keyless requests share (``api/access/limits.py``)

The day allowance is checked before the minute limit: when both are used up, "sign in" is the useful
answer, since waiting a minute would not help. Budgets only guard paid models (free ones cost nothing).
A request with a cached key costs one Redis round trip (the limit script, which also sees revocations; for
a model request it also queues the job: ``AccessCheck.run(enqueue=...)``).
The two "you need a key" answers name the sign-up page, the way in for a new user.

A request refused before that one call (an unknown model, a paid model without a key, a bad body, an
unknown key) still counts: ``count_refusal`` runs the caller's own limits (the IP's minute without a valid
key, the key's rpm) on their own, so refusals cannot be sent without bound, and the caller's next request
past the limit is refused before planning. Only refused requests pay that round trip.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.access.client_ip import rate_limit_subject
from api.access.keys import KeyCache, KeyNames, KeyRecord, KeyStore, utc_month
from api.access.limits import Counter, Lease, Limiter, invalid_key_error
from common.errors import GatewayError, unavailable
from common.ledger import credit_holds_key, credits_key, reservation_nanos
from common.names import Names
from common.queue import JobWrite
from common.settings import Limits
from common.usage import held_key, holds_key

PAID_MODEL_MESSAGE = "You need to sign in to use this model."


@dataclass
class AccessContext:
    """Per-process state for access checks: build once at start-up, share between requests."""

    keys: KeyCache
    limiter: Limiter
    key_names: KeyNames


@dataclass
class AccessResult:
    key: KeyRecord | None = None
    headers: dict[str, str] = field(default_factory=dict)  # add to the response, success or error
    error: GatewayError | None = None
    reserved: Decimal | None = None  # USD held against the key's budget until the worker settles
    credit_reserved: int | None = None  # nanodollars held against the key's owner's credits, likewise
    enqueued: bool | None = None  # AccessCheck.run(enqueue=...): the job was queued with the check
    handed_to: str | None = None  # ... or handed straight to this idle worker process (api/access/limits.py)

    @property
    def allowed(self) -> bool:
        return self.error is None


@dataclass
class Caller:
    """Who sent a request, as far as is known before it is planned (``identify``)."""

    token: str | None  # the presented key (None: none sent)
    record: KeyRecord | None  # its record when the key is valid
    subject: str | None  # the per-IP limit subject, when the client address is known
    error: GatewayError | None = None  # refused already: unknown key, no client address, limit used up


def bearer_token(authorization_header: str | None) -> str | None:
    """The presented key: None when none was sent, "" when the header is not a usable bearer.

    An empty header counts as none: it carries no key, and it is the client-wide way to call the free
    models anonymously with the OpenAI SDK, which insists on an api_key but lets
    ``default_headers={"Authorization": ""}`` replace the header it would build from it.
    """
    if authorization_header is None or not authorization_header.strip():
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


@dataclass
class AccessCheck:
    """A request's access, decided as far as it can be without Redis; ``run`` makes the one Redis call
    (the limit script), on its own or with the request's first enqueue (``api/exchange/exchange.py``)."""

    ctx: AccessContext
    token: str | None
    record: KeyRecord | None
    counters: list[Counter]
    options: dict[str, Any]  # Limiter.check's keyword arguments for this key
    reserve: Decimal | None  # what an admitted request holds against its key's budget
    signup_url: str | None
    leases: list[Lease] = field(default_factory=list)  # the bounds on requests in flight it would join
    lease_id: str = ""  # its member there (the request id)
    hold_until_ms: int = 0  # when its leases end if nothing returns them first
    credit_reserve: int | None = None  # nanodollars held against the owner's credits (an account's key)
    result: AccessResult | None = None  # once run

    async def run(self, enqueue: JobWrite | None = None, depth_limit: int | None = None, *,
                  leased: bool = False) -> AccessResult:
        """The decision, counted. With ``enqueue``, an admitted request's job is queued in the same script:
        ``result.enqueued`` says whether it was (False: its queue was full), ``result.handed_to`` which idle
        worker process took it directly, if one did. ``leased``: the request joins its bounds on requests
        in flight (429 when one is full); only a request whose end returns them (``common/settlement.py``:
        its settlement or its exchange's close) may ask."""
        leases = dict(leases=self.leases, lease_id=self.lease_id, hold_until_ms=self.hold_until_ms) if leased else {}
        decision = await self.ctx.limiter.check(self.counters, **{**self.options, **leases}, enqueue=enqueue,
                                                depth_limit=depth_limit)
        error = decision.error
        if error is not None and error.error_type == "promotion_limit_reached":
            error.message = with_signup(error.message, self.signup_url)
        if decision.revoked and self.token:
            self.ctx.keys.forget(self.token)
        self.result = AccessResult(key=self.record, headers=decision.headers, error=error,
                                   reserved=self.reserve if decision.allowed else None,
                                   credit_reserved=self.credit_reserve if decision.allowed else None,
                                   enqueued=decision.enqueued, handed_to=decision.handed_to)
        return self.result


async def identify(ctx: AccessContext, *, authorization_header: str | None, client_ip: str | None,
                   limits: Limits, signup_url: str | None = None) -> Caller:
    """The caller, before anything of the request is planned: its key (a dictionary hit once cached), or
    its refusal (``Caller.error``): an unknown or revoked key, a keyless caller without a client address,
    or a limit this process saw used up for the current window (no Redis call)."""
    token = bearer_token(authorization_header)
    record, error = await presented_key(ctx, token)
    caller = Caller(token, record, _subject(client_ip), error)
    if caller.error is None and record is None and caller.subject is None:
        caller.error = missing_client_ip()
    if caller.error is None:
        caller.error = ctx.limiter.refused_early(_early_counters(ctx.limiter, caller, limits))
        if caller.error is not None and caller.error.error_type == "promotion_limit_reached":
            caller.error.message = with_signup(caller.error.message, signup_url)
    return caller


def _early_counters(limiter: Limiter, caller: Caller, limits: Limits) -> list[Counter]:
    """What ``identify`` looks up in this process's memory: the caller's own limits and, without a key,
    the IP's day allowance first (when both are used up, "sign in" is the useful answer)."""
    counters = caller_counters(limiter, caller, limits)
    if caller.record is None and caller.subject:
        counters.insert(0, limiter.ip_day(caller.subject, limits.anonymous_requests_per_day))
    return counters


def caller_counters(limiter: Limiter, caller: Caller, limits: Limits) -> list[Counter]:
    """The limits every request of this caller counts against, whatever it asks for: without a valid key,
    its IP's per-minute limit; with one, the key's rpm (if it has one)."""
    if caller.record is not None:
        return [limiter.key_minute(caller.record.id, caller.record.rpm)] if caller.record.rpm is not None else []
    return [limiter.ip_minute(caller.subject, limits.free_requests_per_minute)] if caller.subject else []


async def count_refusal(ctx: AccessContext, caller: Caller, limits: Limits) -> GatewayError | None:
    """Count a request refused before its limit script ran against the caller's own limits (one round trip,
    refusals only); the 429 when that used them up, else None (the request's own refusal stands)."""
    counters = caller_counters(ctx.limiter, caller, limits)
    if not counters:
        return None
    decision = await ctx.limiter.check(counters)
    if decision.error is not None and decision.error.error_type == "rate_limit_exceeded":
        return decision.error
    return None


async def prepare_access(
    ctx: AccessContext,
    *,
    caller: Caller,
    model_is_free: bool,
    limits: Limits,
    signup_url: str | None = None,
    worst_case: Callable[[], Decimal] | None = None,
    request_id: str = "",
    hold_until_ms: int = 0,
    topup_url: str | None = None,
) -> AccessCheck | AccessResult:
    """Steps 1–3 of the table (an ``AccessResult`` with the refusal), or the ``AccessCheck`` of step 4.

    A request with a budget holds its worst case under ``request_id`` until ``hold_until_ms`` (epoch ms),
    unless settled or released before (``common/settlement.py``)."""
    token, record, subject = caller.token, caller.record, caller.subject
    if caller.error is not None and caller.error.error_type != "missing_client_ip":
        return AccessResult(error=caller.error, headers=dict(caller.error.headers))
    if subject is None and (record is None or model_is_free):
        return AccessResult(error=missing_client_ip())
    if record is None and not model_is_free:
        return AccessResult(
            error=GatewayError("paid_model_auth_required", with_signup(PAID_MODEL_MESSAGE, signup_url),
                               code="PAID_MODEL_AUTH_REQUIRED")
        )
    counters = _counters(ctx.limiter, record, model_is_free, subject, limits)
    options: dict[str, Any] = {}
    reserve = None
    credit_reserve = None
    if record is not None:
        budget = record.monthly_budget if not model_is_free else None
        spends_credits = record.owner is not None and not model_is_free
        worst = worst_case() if worst_case is not None and (budget is not None or spends_credits) else None
        reserve = (worst or None) if budget is not None else None
        if spends_credits:
            credit_reserve = max(1, reservation_nanos(worst or Decimal(0)))
        names = ctx.key_names.names
        options = dict(
            key_id=record.id,
            revoked_key=ctx.key_names.revoked,
            used_key=ctx.key_names.used,
            spend_key=ctx.key_names.spend(record.id, utc_month()) if budget is not None else "",
            held_key=held_key(ctx.key_names.names, record.id) if budget is not None else "",
            holds_key=holds_key(ctx.key_names.names, record.id) if budget is not None else "",
            budget=budget,
            reserve=reserve,
            hold_id=request_id,
            hold_until_ms=hold_until_ms,
            credits_key=credits_key(names, record.owner) if spends_credits and record.owner else "",
            credit_holds_key=credit_holds_key(names, record.owner) if spends_credits and record.owner else "",
            credit_reserve=credit_reserve,
            topup_url=topup_url,
            touch=ctx.keys.touch_due(record.id),
        )
    leases = ctx.limiter.leases(record.id if record else None, record.owner if record else None, limits)
    return AccessCheck(ctx, token, record, counters, options, reserve, signup_url, leases, request_id,
                       hold_until_ms, credit_reserve)


def missing_client_ip() -> GatewayError:
    return GatewayError(
        "missing_client_ip",
        "The client address could not be determined (no peer address, or a request that did not "
        "come through the trusted proxy).",
    )


async def check_access(ctx: AccessContext, *, authorization_header: str | None, client_ip: str | None,
                       limits: Limits, **request: Any) -> AccessResult:
    """``identify``, ``prepare_access`` and, unless either refused, its check run on its own."""
    caller = await identify(ctx, authorization_header=authorization_header, client_ip=client_ip, limits=limits,
                            signup_url=request.get("signup_url"))
    check = await prepare_access(ctx, caller=caller, limits=limits, **request)
    return check if isinstance(check, AccessResult) else await check.run()


async def presented_key(ctx: AccessContext, token: str | None) -> tuple[KeyRecord | None, GatewayError | None]:
    """The record of the key sent (None when none was), or the refusal of one that is unknown or revoked."""
    if token is None:
        return None, None
    try:
        record = await ctx.keys.lookup(token) if token else None
    except (RedisError, OSError, asyncio.TimeoutError):
        return None, unavailable("Key verification is temporarily unavailable.", 2.0)
    if record is None or record.revoked:
        return None, invalid_key_error()
    return record, None


def _counters(
    limiter: Limiter, record: KeyRecord | None, model_is_free: bool, subject: str | None, limits: Limits
) -> list[Counter]:
    counters: list[Counter] = []
    if model_is_free and subject is not None:
        if record is None:
            counters.append(limiter.ip_day(subject, limits.anonymous_requests_per_day))
        counters.append(limiter.ip_minute(subject, limits.free_requests_per_minute))
    if model_is_free and record is not None and record.owner is not None:
        counters.append(limiter.account_day(record.owner, limits.user_requests_per_day))
    if record is not None and record.rpm is not None:
        counters.append(limiter.key_minute(record.id, record.rpm))
    return counters


def with_signup(message: str, signup_url: str | None) -> str:
    """The message, plus where to get a key when self-service sign-up is on."""
    if not signup_url:
        return message
    return f"{message} Create a free account and get your API key at {signup_url}"


def _subject(client_ip: str | None) -> str | None:
    """The per-IP limit subject; an address that does not parse counts as unknown."""
    if not client_ip:
        return None
    try:
        return rate_limit_subject(client_ip)
    except ValueError:
        return None


def build_access_context(redis: Redis, names: Names, *, cache_ttl: float = 5.0) -> AccessContext:
    """Wire the pieces on one Redis client (the API process's shared one)."""
    return AccessContext(
        keys=KeyCache(KeyStore(redis, names), ttl=cache_ttl),
        limiter=Limiter(redis, names),
        key_names=KeyNames(names),
    )
