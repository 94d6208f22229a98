"""A top-up: a Stripe Checkout Session for an amount of USD, created server-side.

The balance does not move here: only the signed webhook of the paid session credits it
(``api/billing/webhook.py``), so a person who closes Stripe's page, or forges the return URL, gets nothing.
"""

from __future__ import annotations

from typing import Any

import stripe

from common.errors import GatewayError, unavailable
from common.settings import Settings

PRODUCT_NAME = "Megabrain Gateway credits"


class TopupError(ValueError):
    """A top-up that cannot be made; the message is shown to the person as is."""


def stripe_client(settings: Settings) -> stripe.StripeClient:
    """The SDK's client, async over httpx, at ``STRIPE_API_BASE`` when set (stripe-mock, a test server)."""
    assert settings.stripe_secret_key
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        http_client=stripe.HTTPXClient(timeout=20),
        max_network_retries=1,
    )


def topup_cents(settings: Settings, raw: str) -> int:
    """The amount a person asked for, in cents, within the operator's bounds (whole dollars or cents)."""
    try:
        dollars = float(raw.strip().lstrip("$"))
    except ValueError:
        dollars = -1.0
    cents = round(dollars * 100)
    if not settings.topup_min * 100 <= cents <= settings.topup_max * 100 or abs(dollars * 100 - cents) > 1e-6:
        raise TopupError(f"Choose an amount from ${settings.topup_min} to ${settings.topup_max} "
                         "(in dollars and cents).")
    return cents


async def create_checkout(settings: Settings, account_id: str, cents: int, return_url: str) -> str:
    """A Checkout Session paying ``cents`` USD for ``account_id``'s credits; the URL of Stripe's page."""
    params: dict[str, Any] = {
        "mode": "payment",
        "client_reference_id": account_id,
        "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": cents,
                                                      "product_data": {"name": PRODUCT_NAME}}}],
        "success_url": return_url + "?topup=paid",
        "cancel_url": return_url + "?topup=cancelled",
        "metadata": {"account": account_id},
        "payment_intent_data": {"metadata": {"account": account_id}},
    }
    try:
        session = await stripe_client(settings).v1.checkout.sessions.create_async(params)  # type: ignore[arg-type]
    except stripe.StripeError as exc:
        raise unavailable(f"The payment page could not be opened ({type(exc).__name__}). Try again in a moment.",
                          retry_after=5) from None
    if not session.url:
        raise GatewayError("upstream_error", "Stripe answered without a payment page.")
    return str(session.url)
