"""The account pages in a real browser: Playwright driving Debian's Chromium against a real gateway.

Sign up → log in → the key is shown → it works through the OpenAI SDK → its usage shows on the Profile page →
log out → a wrong password is refused → log in → the key is not shown again → create and revoke keys →
the revoked key gets 401. And credits: a new account without credit is refused the paid model (402) →
"Add credits" → the (fake) Stripe Checkout page → back on the Profile with the balance → the paid call works.
The Activity page shows a request made a moment earlier with its cost, and nobody else's. The operator, signed in,
sees on the dashboard a provider's circuit opened by failing calls and a SIGKILLed worker as gone.
Browser downloads are impossible here, so Playwright is pointed at the system
Chromium; without it these tests are skipped, saying so.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import ThreadedServer
from tests.fakes.stripe_server import StripeFakeState, create_stripe_app
from tests.harness import GatewayHarness, ProcessGateway, wait_until
from tests.pages import PAID, PASSWORD, accounts_env

CHROMIUM = os.environ.get("MEGABRAIN_CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(sync_playwright is None,
                       reason="the playwright package is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator["Browser"]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path) -> Iterator[GatewayHarness]:
    with GatewayHarness.from_env(accounts_env(redis_url, fake_openai[1], tmp_path)) as harness:
        yield harness


def sdk(gw: GatewayHarness, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def ask(gw: GatewayHarness, key: str) -> str:
    answer = sdk(gw, key).chat.completions.create(model=PAID, messages=[{"role": "user", "content": "Hello"}])
    return answer.choices[0].message.content or ""


def fill_and_submit(page: "Page", email: str, password: str, button: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name=button, exact=True).click()


def sign_up_and_log_in(page: "Page", email: str) -> None:
    """Sign-up answers "now log in" (the same for a taken email), with the email filled in; the first log-in
    shows the first key."""
    fill_and_submit(page, email, PASSWORD, "Sign up")
    expect(page.get_by_role("status")).to_contain_text("Now log in")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in", exact=True).click()


def wait_for_usage(page: "Page", model: str, seconds: float = 15.0) -> str:
    """Reload the Profile page until the worker's usage write for ``model`` shows (it is batched)."""
    def shown() -> bool:
        if model in page.locator("#usage").inner_text():
            return True
        page.reload()
        return False

    wait_until(shown, seconds, 0.25)
    return page.locator("#usage").inner_text()


def test_a_new_user_signs_up_uses_the_key_and_manages_keys(browser: "Browser", gw: GatewayHarness) -> None:
    page = browser.new_page()
    email = "new.user@example.org"

    page.goto(gw.url + "/")
    page.get_by_role("link", name="Create a free account").click()
    sign_up_and_log_in(page, email)
    key = page.get_by_label("New API key").inner_text().strip()
    assert key.startswith("mb-")
    expect(page.get_by_text("shown only this once")).to_be_visible()

    assert ask(gw, key)
    page.goto(gw.url + "/profile")
    usage = wait_for_usage(page, "gpt-4o")
    assert "gpt-4o" in usage, usage
    assert key not in page.content()
    assert key[:8] in page.content()

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert page.url.endswith("/login")
    assert page.goto(gw.url + "/profile").url.endswith("/login")  # the session is gone

    fill_and_submit(page, email, "not my password", "Log in")
    expect(page.get_by_role("alert")).to_have_text("The email or the password is wrong.")
    fill_and_submit(page, email, PASSWORD, "Log in")
    assert page.url.endswith("/profile")
    expect(page.get_by_role("heading", name="Profile")).to_be_visible()
    assert key not in page.content()
    assert page.get_by_label("New API key").count() == 0

    page.get_by_label("Key name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    second = page.get_by_label("New API key").inner_text().strip()
    assert second.startswith("mb-") and second != key
    assert ask(gw, second)

    page.goto(gw.url + "/profile")
    page.get_by_role("button", name="Revoke default").click()
    assert page.url.endswith("/profile")
    expect(page.get_by_role("row", name="default").get_by_text("revoked")).to_be_visible()
    with pytest.raises(openai.AuthenticationError):
        ask(gw, key)
    assert ask(gw, second)
    page.close()


def test_pages_work_without_javascript(browser: "Browser", gw: GatewayHarness) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(gw.url + "/signup")
    sign_up_and_log_in(page, "nojs@example.org")
    assert page.get_by_label("New API key").inner_text().startswith("mb-")
    context.close()


def test_activity_shows_a_request_made_a_moment_ago_and_no_one_elses(browser: "Browser", gw: GatewayHarness) -> None:
    mine, theirs = browser.new_context(), browser.new_context()
    page, other = mine.new_page(), theirs.new_page()
    page.goto(gw.url + "/signup")
    sign_up_and_log_in(page, "activity@example.org")
    key = page.get_by_label("New API key").inner_text().strip()
    other.goto(gw.url + "/signup")
    sign_up_and_log_in(other, "someone.else@example.org")

    answer = sdk(gw, key).chat.completions.create(model=PAID, messages=[{"role": "user", "content": "Hello"}])
    looked_up = sdk(gw, key).get(f"/generation?id={answer.id}", cast_to=object)["data"]  # type: ignore[index]
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_role("heading", name="Activity", exact=True)).to_be_visible()
    row = page.get_by_role("row").filter(has_text=answer.id)
    expect(row).to_contain_text("openai/gpt-4o")
    expect(row).to_contain_text(f"{looked_up['total_cost']:.6f}")
    assert "Hello" not in page.locator("#activity").inner_text()

    other.goto(gw.url + "/profile/activity")
    expect(other.get_by_role("heading", name="Activity", exact=True)).to_be_visible()
    assert answer.id not in other.content()
    expect(other.locator("#activity")).to_contain_text("No requests")
    mine.close()
    theirs.close()


@pytest.fixture
def paying_gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
              tmp_path: Path) -> Iterator[tuple[GatewayHarness, StripeFakeState]]:
    """A gateway with no sign-up credit and top-ups through a fake Stripe (tests/fakes/stripe_server.py)."""
    state = StripeFakeState()
    with ThreadedServer(create_stripe_app(state)) as stripe_server:
        state.base_url = stripe_server.url
        env = accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="0",
                           STRIPE_SECRET_KEY=state.secret_key, STRIPE_WEBHOOK_SECRET=state.webhook_secret,
                           STRIPE_API_BASE=state.base_url)
        with GatewayHarness.from_env(env) as harness:
            state.webhook_url = harness.url + "/billing/stripe/webhook"
            yield harness, state


def test_a_new_user_adds_credits_through_checkout_and_spends_them(
        browser: "Browser", paying_gw: tuple[GatewayHarness, StripeFakeState]) -> None:
    gw, stripe_state = paying_gw
    page = browser.new_page()
    page.goto(gw.url + "/signup")
    sign_up_and_log_in(page, "payer@example.org")
    key = page.get_by_label("New API key").inner_text().strip()
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gw, key)
    assert refused.value.status_code == 402
    assert refused.value.response.json()["error_type"] == "insufficient_credits"

    page.goto(gw.url + "/profile")
    expect(page.locator("#low-balance")).to_be_visible()
    page.get_by_label("Amount (USD, 5–500)").fill("5")
    page.get_by_role("button", name="Add credits").click()  # the CSP lets this form's redirect reach Checkout
    expect(page.get_by_role("heading", name="Pay $5.00")).to_be_visible()
    assert page.url.startswith(stripe_state.base_url + "/pay/cs_test_")
    page.get_by_role("button", name="Pay").click()
    expect(page.get_by_text("Payment received")).to_be_visible()
    assert page.url.startswith(gw.url + "/profile")
    expect(page.locator("#balance")).to_have_text("$5.00")
    expect(page.locator("#ledger")).to_contain_text("topup")

    assert ask(gw, key)  # the paid call works now
    page.reload()
    expect(page.locator("#ledger")).to_contain_text("1 request on")
    with pytest.raises(openai.APIStatusError) as too_dear:  # could cost more than is left: 402 again
        sdk(gw, key).chat.completions.create(model=PAID, messages=[{"role": "user", "content": "Hello"}], n=64,
                                             max_tokens=16000)
    assert too_dear.value.status_code == 402
    page.close()


def reload_until(page: "Page", shown: "Callable[[], bool]", seconds: float = 20.0) -> bool:
    """Reload the (server-rendered, never self-refreshing) page until ``shown`` holds."""
    def check() -> bool:
        if shown():
            return True
        page.reload()
        return False
    return wait_until(check, seconds, 0.25)


def test_the_operator_sees_an_opened_circuit_and_a_killed_worker_gone(
        browser: "Browser", redis_url: str, tmp_path: Path, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, upstream = fake_openai
    operator = "ops@example.org"
    env = accounts_env(redis_url, upstream, tmp_path, MEGABRAIN_UPSTREAM_MAX_RETRIES="0",
                       MEGABRAIN_OPERATOR_EMAILS=operator)
    with ProcessGateway(env) as gateway:
        context = browser.new_context()
        page = context.new_page()
        page.goto(gateway.url + "/signup")
        sign_up_and_log_in(page, operator)
        page.goto(gateway.url + "/operator")
        expect(page.get_by_role("heading", name="Operator", exact=True)).to_be_visible()
        (worker,) = gateway.workers
        pool = page.locator("#pools").get_by_role("row").filter(has_text="openai")
        expect(pool).to_contain_text("live (")
        circuit = page.locator("#providers").get_by_role("row").filter(has_text="openai").locator("td").nth(1)
        expect(circuit).to_have_text("closed")

        try:
            state.failures = [503] * 6
            for _ in range(6):  # free model, no key, no retry: each one fails at the upstream once
                answer = httpx.post(gateway.url + "/v1/chat/completions", timeout=20,
                                    json={"model": "openai/gpt-4o-mini",
                                          "messages": [{"role": "user", "content": "hi"}]})
                assert answer.status_code >= 500
        finally:
            state.failures = []
        assert reload_until(page, lambda: circuit.inner_text().split()[0] == "open"), circuit.inner_text()
        expect(circuit.locator(".bad").first).to_have_text("open")  # marked bad, not only said

        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert reload_until(page, lambda: "gone (" in pool.inner_text()), pool.inner_text()
        expect(pool.locator(".bad").filter(has_text="gone (")).to_be_visible()
        assert "live (" not in pool.inner_text()
        context.close()
