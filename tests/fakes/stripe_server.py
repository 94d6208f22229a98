"""A fake Stripe API: the subset the gateway uses, as strict as Stripe, as a real local HTTP server.

- ``POST /v1/checkout/sessions`` (form-encoded, bracketed keys, as the ``stripe`` SDK sends them): needs
  the secret key (401 otherwise), ``mode=payment``, ``success_url``, ``cancel_url`` and one line item with
  ``price_data`` (currency, ``unit_amount`` >= 50 cents, a product name); Stripe's error shape otherwise
  (``{"error": {"type": "invalid_request_error", "code", "message", "param"}}``, 400).
- ``GET /v1/checkout/sessions/{id}``: the session, or 404 ``resource_missing``.
- The hosted page: ``GET /pay/{id}`` shows a Pay button; ``POST /pay/{id}`` marks the session paid, sends
  ``checkout.session.completed`` to ``webhook_url`` signed with Stripe's scheme (``sign``), and redirects
  to the session's ``success_url`` — what Stripe's Checkout does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header: ``t=<unix time>,v1=<HMAC-SHA256 of "<t>.<payload>" under the secret>``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    """A webhook event's body as Stripe sends it."""
    return json.dumps({"id": event_id or "evt_" + secrets.token_hex(12), "object": "event", "type": kind,
                       "api_version": "2025-01-27", "created": int(time.time()), "livemode": False,
                       "data": {"object": obj}}).encode()


def nested(form: list[tuple[str, str]]) -> dict[str, Any]:
    """``line_items[0][price_data][currency]=usd`` → ``{"line_items": {"0": {"price_data": {...}}}}``."""
    out: dict[str, Any] = {}
    for key, value in form:
        head = key.split("[", 1)[0]
        path = [head, *_BRACKETS.findall(key)]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


@dataclass
class StripeFakeState:
    secret_key: str = "sk_test_fake_" + "x" * 24
    webhook_secret: str = "whsec_fake_" + "y" * 24
    webhook_url: str = ""  # where the hosted page sends checkout.session.completed
    base_url: str = ""  # set when the server starts
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: int = 0
    webhook_answers: list[int] = field(default_factory=list)


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message}
    if param:
        body["param"] = param
    if code:
        body["code"] = code
    return JSONResponse({"error": body}, status_code=status)


def create_stripe_app(state: StripeFakeState) -> Starlette:
    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Bearer {state.secret_key}"

    def unauthorised() -> JSONResponse:
        return _error(401, "Invalid API Key provided: sk_test_****")

    async def create_session(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _error(400, "Invalid request: the body must be form-encoded.")
        params = nested(list((await request.form()).multi_items()))  # type: ignore[arg-type]
        if params.get("mode") != "payment":
            return _error(400, "Missing required param: mode.", param="mode", code="parameter_missing")
        for name in ("success_url", "cancel_url"):
            if not str(params.get(name, "")).startswith(("http://", "https://")):
                return _error(400, f"Not a valid URL: {name}", param=name, code="url_invalid")
        items = params.get("line_items") or {}
        if list(items) != ["0"]:
            return _error(400, "Missing required param: line_items.", param="line_items", code="parameter_missing")
        price = items["0"].get("price_data") or {}
        if items["0"].get("quantity") != "1" or price.get("currency") != "usd":
            return _error(400, "Invalid line_items[0]: quantity 1 and currency usd expected here.",
                          param="line_items[0]")
        try:
            amount = int(price.get("unit_amount", ""))
        except ValueError:
            return _error(400, "Invalid integer: unit_amount", param="line_items[0][price_data][unit_amount]")
        if amount < 50:
            return _error(400, "The Checkout Session's total amount due must add up to at least $0.50 usd",
                          param="line_items[0][price_data][unit_amount]", code="amount_too_small")
        if not (price.get("product_data") or {}).get("name"):
            return _error(400, "Missing required param: line_items[0][price_data][product_data][name].",
                          param="line_items[0][price_data][product_data][name]", code="parameter_missing")
        session_id = "cs_test_" + secrets.token_hex(16)
        session = {
            "id": session_id, "object": "checkout.session", "mode": "payment", "status": "open",
            "payment_status": "unpaid", "amount_total": amount, "amount_subtotal": amount, "currency": "usd",
            "client_reference_id": params.get("client_reference_id"), "metadata": params.get("metadata") or {},
            "success_url": params["success_url"], "cancel_url": params["cancel_url"], "payment_intent": None,
            "url": f"{state.base_url}/pay/{session_id}", "livemode": False, "created": int(time.time()),
        }
        state.sessions[session_id] = session
        state.created += 1
        return JSONResponse(session)

    async def get_session(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        session = state.sessions.get(request.path_params["session_id"])
        if session is None:
            return _error(404, f"No such checkout.session: '{request.path_params['session_id']}'", param="session",
                          code="resource_missing")
        return JSONResponse(session)

    async def pay_page(request: Request) -> Response:
        session = state.sessions.get(request.path_params["session_id"])
        if session is None:
            return HTMLResponse("<h1>Something went wrong</h1>", status_code=404)
        return HTMLResponse(
            f"<!doctype html><title>Checkout</title><h1>Pay ${session['amount_total'] / 100:.2f}</h1>"
            f"<form method='post'><button type='submit'>Pay</button></form>"
            f"<a href='{session['cancel_url']}'>Back</a>")

    async def pay(request: Request) -> Response:
        session = state.sessions.get(request.path_params["session_id"])
        if session is None:
            return HTMLResponse("<h1>Something went wrong</h1>", status_code=404)
        session.update(status="complete", payment_status="paid", payment_intent="pi_" + secrets.token_hex(12))
        if state.webhook_url:
            body = event("checkout.session.completed", dict(session))
            async with httpx.AsyncClient(timeout=20) as client:
                answer = await client.post(state.webhook_url, content=body, headers={
                    "content-type": "application/json", "stripe-signature": sign(body, state.webhook_secret)})
            state.webhook_answers.append(answer.status_code)
        return RedirectResponse(session["success_url"], status_code=303)

    return Starlette(routes=[
        Route("/v1/checkout/sessions", create_session, methods=["POST"]),
        Route("/v1/checkout/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/pay/{session_id}", pay_page, methods=["GET"]),
        Route("/pay/{session_id}", pay, methods=["POST"]),
    ])
