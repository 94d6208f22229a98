"""The Profile page: the user's keys (create → shown once, revoke), credits (balance, "Add credits" through
Stripe Checkout, the ledger), 30 days of usage, spend, allowance.

Usage is read from the account's day totals the worker keeps beside each key's (common/usage.py): 30
hashes in one round trip, however many keys the account has (reading every key's 30 days made one
account with hundreds of keys slow everyone's requests). The chart is an SVG drawn here, so the page
needs no script. Keys are bounded per account (``keys_per_account``), so the key table is too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api.access import verification
from api.access.accounts import email_key
from api.access.admission import access_context
from api.access.keys import KeyLimitError, KeyRecord, KeyStore, UsageRow, utc_day
from api.billing.checkout import TopupError, create_checkout, topup_cents
from api.pages.forms import Visitor, form_endpoint, visitor
from common.errors import GatewayError
from common.ledger import Entry, Ledger, format_usd, nanos
from common.settings import Settings

USAGE_DAYS = 30
LEDGER_READ, LEDGER_SHOWN = 1000, 50  # newest ledger entries read, rows shown (usage summed per day)
LOW_BALANCE = nanos("1")  # below this the page says so
VERIFY_NOTICES = {"1": "Your email address is verified.",
                  "sent": "A new verification link is on its way to that address."}
TOPUP_NOTICES = {"paid": "Payment received: your credits are added as soon as Stripe confirms it (seconds).",
                 "cancelled": "The payment was cancelled; nothing was charged."}
MAX_KEY_NAME = 64
MAX_KEY_LIMIT = 100_000  # USD per month: a key's own cap (its monthly budget)
CHART_WIDTH, CHART_HEIGHT = 600, 120


@dataclass
class Bar:
    day: str
    requests: int
    x: float
    y: float
    height: float


@dataclass
class DayModel:
    day: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)


def merge_usage(per_key: list[list[UsageRow]]) -> list[DayModel]:
    """Rows (of one or several sources) summed per (day, model), newest day first."""
    merged: dict[tuple[str, str], DayModel] = {}
    for rows in per_key:
        for row in rows:
            total = merged.setdefault((row.day, row.model), DayModel(row.day, row.model))
            total.requests += row.requests
            total.prompt_tokens += row.prompt_tokens
            total.completion_tokens += row.completion_tokens
            try:
                total.cost += Decimal(row.cost)
            except InvalidOperation:
                pass
    return sorted(merged.values(), key=lambda r: (r.day, r.model), reverse=True)


@dataclass
class LedgerRow:
    time: float
    kind: str
    details: str
    amount: int  # nanodollars
    model: str = ""


def ledger_rows(entries: list[Entry]) -> list[LedgerRow]:
    """The ledger as a person reads it, newest first: each grant, top-up and refund on its own row, usage
    summed per UTC day ("12 requests")."""
    rows: list[LedgerRow] = []
    usage_day: dict[str, LedgerRow] = {}
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.kind != "usage":
            rows.append(LedgerRow(entry.time, entry.kind, entry.note, entry.amount))
            continue
        day = utc_day(entry.time)
        row = usage_day.get(day)
        if row is None:
            row = usage_day[day] = LedgerRow(entry.time, "usage", "", 0)
            rows.append(row)
        row.amount += entry.amount
        counts[day] = counts.get(day, 0) + 1
        row.details = f"{counts[day]} request{'s' if counts[day] > 1 else ''} on {day}"
    return rows[:LEDGER_SHOWN]


def chart(rows: list[DayModel], now: float) -> list[Bar]:
    """One bar per day of the last USAGE_DAYS (oldest on the left), height = requests that day."""
    days = [utc_day(now - i * 86400) for i in reversed(range(USAGE_DAYS))]
    per_day = {day: 0 for day in days}
    for row in rows:
        if row.day in per_day:
            per_day[row.day] += row.requests
    peak = max(per_day.values()) or 1
    slot = CHART_WIDTH / USAGE_DAYS
    bars = []
    for i, day in enumerate(days):
        height = (CHART_HEIGHT - 4) * per_day[day] / peak
        bars.append(Bar(day, per_day[day], round(i * slot + 1, 1), round(CHART_HEIGHT - height, 1),
                        round(height, 1)))
    return bars


async def free_used_today(who: Visitor) -> int:
    """Today's count of the account's free-model day counter (the limit script's ``{w, n}`` hash)."""
    assert who.account is not None
    window, count = await who.gateway.redis.hmget(who.gateway.names.account_day(who.account.id), ["w", "n"])
    return int(count) if window is not None and int(window) == int(time.time() // 86400) and count else 0


async def render_profile(who: Visitor, *, new_key: tuple[KeyRecord, str] | None = None, status: int = 200,
                         error: str | None = None) -> Response:
    assert who.account is not None
    store = KeyStore(who.gateway.redis, who.gateway.names)
    keys = await store.owned(who.account.id)
    now = time.time()
    ledger = Ledger(who.gateway.redis, who.gateway.names)
    usage, spends, used_today, balance, entries = await asyncio.gather(
        store.account_usage(who.account.id, USAGE_DAYS, now),
        store.month_spends([k.id for k in keys], now),
        free_used_today(who),
        ledger.balance(who.account.id),
        ledger.entries(who.account.id, LEDGER_READ),
    )
    settings = who.gateway.settings
    rows = merge_usage([usage])
    limits = who.gateway.settings.limits
    response = who.render(
        "profile.html", status=status, error=error,
        keys=keys, spends=spends, new_key=new_key,
        rows=rows, bars=chart(rows, now), chart_width=CHART_WIDTH, chart_height=CHART_HEIGHT,
        month_spend=sum(spends.values()),
        budgets=[k for k in keys if k.monthly_budget is not None and not k.revoked],
        user_per_day=limits.user_requests_per_day, anonymous_per_day=limits.anonymous_requests_per_day,
        free_used_today=used_today,
        balance=balance, entries=ledger_rows(entries), usd=format_usd, low_balance=balance.available < LOW_BALANCE,
        topups=settings.topups, topup_min=settings.topup_min, topup_max=settings.topup_max,
        topup_notice=TOPUP_NOTICES.get(who.request.query_params.get("topup", "")),
        unverified=bool(settings.smtp_url) and not who.account.verified, signup_credit=settings.signup_credit,
        verify_notice=VERIFY_NOTICES.get(who.request.query_params.get("verified", "")),
        api_base=(who.gateway.settings.public_url or str(who.request.base_url).rstrip("/")).rstrip("/")
        + who.base + "/v1",
    )
    if settings.topups:  # "Add credits" posts here and is redirected to Stripe's page: the CSP must allow it
        response.headers["content-security-policy"] = response.headers["content-security-policy"].replace(
            "form-action 'self'", "form-action 'self' " + checkout_origin(settings))
    return response


def checkout_origin(settings: Settings) -> str:
    """Where Stripe's payment page lives: checkout.stripe.com, or the test server's origin."""
    if settings.stripe_api_base:
        parts = urlsplit(settings.stripe_api_base)
        return f"{parts.scheme}://{parts.netloc}"
    return "https://checkout.stripe.com"


async def profile(request: Request) -> Response:
    who = await visitor(request)
    if who.account is None:
        return who.redirect("/login")
    return await render_profile(who)


@form_endpoint(signed_in=True)
async def create_key(who: Visitor, fields: dict[str, str]) -> Response:
    assert who.account is not None
    name = " ".join(fields.get("name", "").split())
    if not name or len(name) > MAX_KEY_NAME:
        return await render_profile(who, status=400, error=f"Give the key a name of 1 to {MAX_KEY_NAME} characters.")
    limit = fields.get("monthly_limit", "").strip()
    try:  # a cap of the key's spend per UTC month, within the account's credits: a key to hand to a script
        budget = float(Decimal(limit)) if limit else None
    except InvalidOperation:
        budget = -1.0
    if budget is not None and not 0 <= budget <= MAX_KEY_LIMIT:
        return await render_profile(who, status=400,
                                    error=f"A key's monthly limit is 0 to {MAX_KEY_LIMIT} USD, or empty.")
    try:
        created = await KeyStore(who.gateway.redis, who.gateway.names).create(
            name, monthly_budget=budget, owner=who.account.id, max_owned=who.gateway.settings.limits.keys_per_account)
    except KeyLimitError as exc:
        return await render_profile(who, status=400, error=str(exc))
    return await render_profile(who, new_key=created, status=201)


@form_endpoint(signed_in=True)
async def revoke_key(who: Visitor, fields: dict[str, str]) -> Response:
    assert who.account is not None
    store = KeyStore(who.gateway.redis, who.gateway.names)
    key_id = who.request.path_params["key_id"]
    record = await store.get(key_id)
    if record is None or record.owner != who.account.id:
        return await render_profile(who, status=404, error="There is no such key among yours.")
    await store.revoke(key_id)
    return who.redirect("/profile")


@form_endpoint(signed_in=True)
async def add_credits(who: Visitor, fields: dict[str, str]) -> Response:
    """"Add credits": a Stripe Checkout Session for the amount, then Stripe's page (303). The balance moves
    only when Stripe's signed webhook says the session is paid (``api/billing/webhook.py``)."""
    assert who.account is not None
    settings = who.gateway.settings
    if not settings.topups:
        return await render_profile(who, status=403, error="Top-ups are turned off on this gateway.")
    try:
        cents = topup_cents(settings, fields.get("amount", ""))
    except TopupError as exc:
        return await render_profile(who, status=400, error=str(exc))
    here = settings.public_url.rstrip("/") if settings.public_url else str(who.request.base_url).rstrip("/")
    try:
        url = await create_checkout(settings, who.account.id, cents, here + who.base + "/profile")
    except GatewayError as exc:
        return await render_profile(who, status=exc.status, error=exc.message)
    return RedirectResponse(url, status_code=303)


@form_endpoint(signed_in=True)
async def resend_verification(who: Visitor, fields: dict[str, str]) -> Response:
    """A new verification link, to the address typed again (the store keeps only its keyed hash, so it is
    checked against that), at most ``RESENDS_PER_HOUR`` per account."""
    assert who.account is not None
    gateway = who.gateway
    if not gateway.settings.smtp_url or who.account.verified:
        return who.redirect("/profile")
    limiter = access_context(gateway).limiter
    decision = await limiter.check([limiter.attempts("verify_resend", who.account.id, verification.RESENDS_PER_HOUR,
                                                     3600)])
    if decision.error is not None:
        return await render_profile(who, status=429, error="Too many verification mails asked for this hour. "
                                                           "Try again later.")
    email = fields.get("email", "")
    owner = await gateway.redis.get(gateway.names.account_email(email_key(gateway.secret, email)))
    if (owner.decode() if isinstance(owner, bytes) else owner) != who.account.id:
        return await render_profile(who, status=400, error="That is not the email address of this account.")
    link = await verification.new_link(gateway.redis, gateway.names, who.account.id, site_url(who))
    verification.send_later(gateway.settings, verification.message(gateway.settings, email, link))
    return who.redirect("/profile?verified=sent")


def site_url(who: Visitor) -> str:
    """This site's pages, as a link in a mail must name them (``MEGABRAIN_PUBLIC_URL`` when set)."""
    settings = who.gateway.settings
    here = settings.public_url.rstrip("/") if settings.public_url else str(who.request.base_url).rstrip("/")
    return here + who.base
