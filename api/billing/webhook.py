"""Stripe's webhook: the only way a payment moves a balance.

Every event is verified first (``stripe.WebhookSignature``: the ``Stripe-Signature`` HMAC over the raw body
under ``STRIPE_WEBHOOK_SECRET``, its timestamp within ``TOLERANCE`` seconds); a forged, stale or missing
signature changes nothing (400). Then:

- ``checkout.session.completed`` / ``checkout.session.async_payment_succeeded`` with ``payment_status:
  paid``: a ``topup`` entry of ``amount_total`` cents for ``client_reference_id``, under the entry id
  ``stripe-<session id>``, so the same event delivered again, or both events of one session, credit once.
  Its payment intent is remembered (``credits:stripe:pi:<id>``) to find the account of a later refund.
- ``charge.refunded``: a ``refund`` entry of what the charge has had refunded beyond what was debited
  already (Stripe reports it cumulatively): replays and reordered partial refunds debit each cent once.
- anything else (an unpaid session, other event types, another currency): acknowledged, nothing changes.

Each is one or two Redis writes: Stripe gets its 200 at once. Nothing of a card is ever seen; logs carry
event ids and types, never an email.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import stripe

from common import metrics
from common.ledger import Ledger, nanos
from common.names import Names

log = logging.getLogger(__name__)

TOLERANCE = 300  # seconds: Stripe's own default; an older signature is a replay
PAID_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
CENT_NANOS = nanos("0.01")


class SignatureError(ValueError):
    """The event is not Stripe's (or not fresh): nothing is done with it."""


@dataclass(frozen=True)
class Outcome:
    """What an event did: ``action`` is ``credited``, ``refunded``, ``duplicate`` or ``ignored``."""

    action: str
    account: str = ""


def verified_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event, once its signature and timestamp are verified with the SDK; else ``SignatureError``."""
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), signature or "", secret, TOLERANCE)
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(str(exc).split("\n")[0][:200] or "invalid signature") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise SignatureError("not an event")
    return event


async def handle(redis: Any, names: Names, event: dict[str, Any]) -> Outcome:
    """Apply one verified event to the ledger (idempotently: see the module docstring)."""
    kind = str(event.get("type") or "")
    obj = event["data"].get("object") or {}
    if kind in PAID_EVENTS:
        return await _paid_session(redis, names, event, obj)
    if kind == "charge.refunded":
        return await _refunded_charge(redis, names, event, obj)
    return Outcome("ignored")


async def _paid_session(redis: Any, names: Names, event: dict[str, Any], session: dict[str, Any]) -> Outcome:
    account = str(session.get("client_reference_id") or "")
    cents = session.get("amount_total")
    if (session.get("payment_status") != "paid" or session.get("mode") != "payment"
            or str(session.get("currency") or "").lower() != "usd" or not account
            or not isinstance(cents, int) or cents <= 0):
        return Outcome("ignored", account)
    applied = await Ledger(redis, names).apply(account, "topup", cents * CENT_NANOS, entry_id=f"stripe-{session['id']}",
                                               note=f"Stripe Checkout {session['id']}")
    if session.get("payment_intent"):
        await redis.set(names.key(f"credits:stripe:pi:{session['payment_intent']}"), account)
    log.info("stripe event %s %s: %s", event.get("id"), event.get("type"),
             "credited" if applied.applied else "duplicate")
    if applied.applied:
        metrics.credit_event("topup")
    return Outcome("credited" if applied.applied else "duplicate", account)


async def _refunded_charge(redis: Any, names: Names, event: dict[str, Any], charge: dict[str, Any]) -> Outcome:
    refunded = charge.get("amount_refunded")
    if str(charge.get("currency") or "").lower() != "usd" or not isinstance(refunded, int) or refunded <= 0:
        return Outcome("ignored")
    account = ""
    if charge.get("payment_intent"):
        found = await redis.get(names.key(f"credits:stripe:pi:{charge['payment_intent']}"))
        account = found.decode() if isinstance(found, bytes) else (found or "")
    account = account or str((charge.get("metadata") or {}).get("account") or "")
    if not account:
        log.info("stripe event %s: a refund of a payment that bought no credits here", event.get("id"))
        return Outcome("ignored")
    applied = await Ledger(redis, names).refund(account, str(charge.get("payment_intent") or charge.get("id")),
                                                refunded * CENT_NANOS, note=f"Stripe refund of {charge.get('id')}")
    log.info("stripe event %s %s: %s", event.get("id"), event.get("type"),
             "refunded" if applied.applied else "duplicate")
    if applied.applied:
        metrics.credit_event("refund")
    return Outcome("refunded" if applied.applied else "duplicate", account)
