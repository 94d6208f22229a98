"""Top-ups through Stripe Checkout (api/billing/), against a fake Stripe that is a real HTTP server
(tests/fakes/stripe_server.py) reached by the official ``stripe`` SDK through ``STRIPE_API_BASE``.

A new user without credit is refused a paid model (402), adds $5 on the Profile page, pays on the (fake)
Checkout page, comes back to a Profile that shows the balance and the ledger, and the same call works.
The balance moves only on the signed webhook: replays, duplicates and reordered events credit once; a bad
signature, an old timestamp, an unknown type or an unpaid session change nothing; a refund debits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import ThreadedServer
from tests.fakes.stripe_server import StripeFakeState, create_stripe_app, event, sign
from tests.harness import GatewayHarness
from tests.pages import PAID, Browser, accounts_env, keys_in

MESSAGES = [{"role": "user", "content": "hi"}]
WEBHOOK = "/billing/stripe/webhook"


@pytest.fixture
def stripe_fake() -> Iterator[StripeFakeState]:
    state = StripeFakeState()
    with ThreadedServer(create_stripe_app(state)) as server:
        state.base_url = server.url
        yield state


@pytest.fixture
def gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path,
       stripe_fake: StripeFakeState) -> Iterator[GatewayHarness]:
    env = accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="0",
                       STRIPE_SECRET_KEY=stripe_fake.secret_key, STRIPE_WEBHOOK_SECRET=stripe_fake.webhook_secret,
                       STRIPE_API_BASE=stripe_fake.base_url)
    with GatewayHarness.from_env(env) as harness:
        stripe_fake.webhook_url = harness.url + WEBHOOK
        yield harness


def chat(gw: GatewayHarness, key: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": PAID, "messages": MESSAGES, "max_tokens": 50},
                      headers={"authorization": f"Bearer {key}"}, timeout=30)


def credits(gw: GatewayHarness, key: str) -> dict[str, object]:
    return httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {key}"}, timeout=10).json()["data"]


def deliver(gw: GatewayHarness, body: bytes, secret: str, timestamp: int | None = None) -> httpx.Response:
    return httpx.post(gw.url + WEBHOOK, content=body, timeout=10,
                      headers={"content-type": "application/json", "stripe-signature": sign(body, secret, timestamp)})


def test_a_new_user_adds_five_dollars_and_the_paid_call_works(gw: GatewayHarness, stripe_fake: StripeFakeState) -> None:
    browser = Browser(gw.url)
    key = keys_in(browser.join("buyer@example.org").text)[0]
    assert chat(gw, key).status_code == 402
    page = browser.get("/profile").text
    assert "Add credits" in page and 'id="low-balance"' in page

    too_much = browser.submit("/profile", "/profile/credits", {"amount": "100000"})
    assert too_much.status_code == 400 and "from $5 to $500" in too_much.text and stripe_fake.created == 0
    forged = browser.http.post("/profile/credits", data={"amount": "5"})  # no CSRF token: refused
    assert forged.status_code == 403 and stripe_fake.created == 0

    to_stripe = browser.submit("/profile", "/profile/credits", {"amount": "5"})
    assert to_stripe.status_code == 303
    pay_url = to_stripe.headers["location"]
    assert pay_url.startswith(stripe_fake.base_url + "/pay/cs_test_")
    session = next(iter(stripe_fake.sessions.values()))
    assert session["amount_total"] == 500 and session["client_reference_id"]
    assert credits(gw, key)["total_credits"] == 0  # nothing before Stripe says it is paid

    back = httpx.post(pay_url, timeout=30)  # the person pays on Stripe's page; Stripe calls the webhook
    assert back.status_code == 303 and back.headers["location"] == gw.url + "/profile?topup=paid"
    assert stripe_fake.webhook_answers == [200]
    profile = browser.get("/profile?topup=paid").text
    assert "Payment received" in profile and 'id="balance">$5.00<' in profile and "topup" in profile

    answered = chat(gw, key)
    assert answered.status_code == 200, answered.text
    cost = Decimal(str(answered.json()["usage"]["cost"]))
    data = credits(gw, key)
    assert data["total_credits"] == 5 and Decimal(str(data["balance"])) == Decimal(5) - cost
    assert "1 request on" in browser.get("/profile").text  # usage per day in the ledger


def _session(account: str, session_id: str = "cs_test_given", paid: bool = True,
             cents: int = 1000) -> dict[str, object]:
    return {"id": session_id, "object": "checkout.session", "mode": "payment", "currency": "usd",
            "amount_total": cents, "client_reference_id": account, "payment_intent": "pi_" + session_id,
            "payment_status": "paid" if paid else "unpaid", "status": "complete" if paid else "open"}


def test_the_webhook_credits_once_and_only_when_signed_and_paid(gw: GatewayHarness,
                                                                 stripe_fake: StripeFakeState) -> None:
    browser = Browser(gw.url)
    key = keys_in(browser.join("hook@example.org").text)[0]
    account = gw.run(_owner_of(gw, key))
    secret = stripe_fake.webhook_secret

    paid = event("checkout.session.completed", _session(account))
    for _ in range(3):  # the same event delivered three times
        assert deliver(gw, paid, secret).status_code == 200
    other_event = event("checkout.session.async_payment_succeeded", _session(account))  # same session
    assert deliver(gw, other_event, secret).json()["action"] == "duplicate"
    assert credits(gw, key)["total_credits"] == 10

    second = event("checkout.session.completed", _session(account, "cs_test_second", cents=550))
    forged = deliver(gw, second, "whsec_not_the_secret")
    assert forged.status_code == 400 and forged.json()["error_type"] == "invalid_request"
    stale = deliver(gw, second, secret, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 400
    unsigned = httpx.post(gw.url + WEBHOOK, content=second, timeout=10)
    assert unsigned.status_code == 400
    assert deliver(gw, event("customer.created", {"id": "cus_1"}), secret).json()["action"] == "ignored"
    unpaid = event("checkout.session.completed", _session(account, "cs_test_unpaid", paid=False))
    assert deliver(gw, unpaid, secret).json()["action"] == "ignored"
    assert credits(gw, key)["total_credits"] == 10  # none of those changed anything
    assert deliver(gw, second, secret).json()["action"] == "credited"
    assert credits(gw, key)["total_credits"] == 15.5

    # refunds of the first payment: $2 then $4 in all, delivered out of order and twice
    def refund(total_cents: int) -> bytes:
        return event("charge.refunded", {"id": "ch_1", "object": "charge", "currency": "usd",
                                         "payment_intent": "pi_cs_test_given", "amount": 1000,
                                         "amount_refunded": total_cents, "refunded": total_cents == 1000})

    later, earlier = refund(400), refund(200)
    assert deliver(gw, later, secret).json()["action"] == "refunded"
    assert deliver(gw, earlier, secret).json()["action"] == "duplicate"
    assert deliver(gw, later, secret).json()["action"] == "duplicate"
    data = credits(gw, key)
    assert data["total_credits"] == 11.5 and data["balance"] == "11.5"


async def _owner_of(gw: GatewayHarness, key: str) -> str:
    """The account that owns ``key`` (the id Checkout carries as ``client_reference_id``)."""
    from api.access.keys import KeyStore
    from common.names import Names
    from common.redis import connect

    redis = connect(gw.settings.redis_url)
    try:
        record = await KeyStore(redis, Names(gw.settings.namespace)).lookup(key)
        assert record is not None and record.owner
        return record.owner
    finally:
        await redis.aclose()


def test_without_stripe_top_ups_are_off(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                                        tmp_path: Path) -> None:
    with GatewayHarness.from_env(accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="0")) as gw:
        browser = Browser(gw.url)
        browser.join("nostripe@example.org")
        assert 'id="topups-off"' in browser.get("/profile").text
        assert browser.submit("/profile", "/profile/credits", {"amount": "5"}).status_code == 403
        assert httpx.post(gw.url + WEBHOOK, content=b"{}", timeout=10).status_code == 404


def test_a_person_hands_a_capped_key_to_a_script(gw: GatewayHarness, stripe_fake: StripeFakeState) -> None:
    """A key made on the Profile with a monthly limit spends the account's credits up to that limit only."""
    browser = Browser(gw.url)
    browser.join("capper@example.org")
    created = browser.submit("/profile", "/profile/keys", {"name": "script", "monthly_limit": "0.0012"})
    assert created.status_code == 201
    capped = keys_in(created.text)[0]
    account = gw.run(_owner_of(gw, capped))
    paid = event("checkout.session.completed", _session(account, "cs_test_cap", cents=500))
    assert deliver(gw, paid, stripe_fake.webhook_secret).json()["action"] == "credited"
    outcomes = [chat(gw, capped).status_code for _ in range(10)]  # each may cost ~$0.0005: the cap binds
    assert outcomes[0] == 200 and 402 in outcomes
    over = chat(gw, capped).json()
    assert over["error_type"] == "budget_exceeded"  # the key's own cap, not the account's credits ($5)
    assert Decimal(str(credits(gw, capped)["balance"])) > Decimal("4.99")
    bad = browser.submit("/profile", "/profile/keys", {"name": "bad", "monthly_limit": "-1"})
    assert bad.status_code == 400 and "monthly limit" in bad.text
