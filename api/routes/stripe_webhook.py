"""``POST /billing/stripe/webhook``: Stripe's events about top-ups (``api/billing/webhook.py``).

404 while Stripe is not configured; 400 ``invalid_request`` for a signature that does not verify (forged,
stale, missing) and nothing changes; else 200 ``{"received": true, "action": …}``, at once.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.billing.webhook import SignatureError, handle, verified_event
from api.gateway import Gateway
from common.errors import GatewayError

MAX_EVENT_BYTES = 512 * 1024  # Stripe's events are a few KB


async def stripe_webhook(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    secret = gateway.settings.stripe_webhook_secret
    if not secret:
        raise GatewayError("not_found", "Top-ups are not configured on this gateway (STRIPE_WEBHOOK_SECRET).")
    payload = b""
    async for chunk in request.stream():
        payload += chunk
        if len(payload) > MAX_EVENT_BYTES:
            raise GatewayError("payload_too_large", "A Stripe event is a few kilobytes; this body is too large.")
    try:
        event = verified_event(payload, request.headers.get("stripe-signature"), secret)
    except SignatureError as exc:
        raise GatewayError("invalid_request", f"The Stripe signature does not verify: {exc}") from None
    outcome = await handle(gateway.redis, gateway.names, event)
    return Response(msgspec.json.encode({"received": True, "action": outcome.action}), media_type="application/json")


ROUTES = [
    ("POST", "/billing/stripe/webhook", stripe_webhook),
]
