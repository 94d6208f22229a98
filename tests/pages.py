"""Helpers for the account pages' tests: a gateway with accounts, and a cookie-keeping form client."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.harness import env_for

FREE = "openai/gpt-4o-mini"  # made free by the config below
PAID = "openai/gpt-4o"
ADMIN_KEY = "admin-" + "p" * 32
PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_KEY = re.compile(r"\bmb-[A-Za-z0-9_\-]{20,}")


def accounts_env(redis_url: str, upstream: str, tmp_path: Path, *, hops: int = 0, anon_per_day: int = 50,
                 user_per_day: int = 1000, per_email_ip: int = 5, per_email: int = 100, per_ip: int = 30,
                 signups_per_ip: int = 50, keys_per_account: int = 20, signup_credit: str = "5",
                 **extra: str) -> dict[str, str]:
    """A gateway with sign-up on; each new account is granted ``signup_credit`` USD of prepaid credits (its
    paid-model requests spend them: common/ledger.py), so account keys can call the paid model."""
    config = tmp_path / "megabrain.toml"
    config.write_text(
        "[limits]\n"
        f"trusted_proxy_hops = {hops}\n"
        f"anonymous_requests_per_day = {anon_per_day}\n"
        f"user_requests_per_day = {user_per_day}\n"
        f"login_failures_per_email_ip = {per_email_ip}\n"
        f"login_failures_per_email = {per_email}\n"
        f"keys_per_account = {keys_per_account}\n"
        f"login_failures_per_ip = {per_ip}\n"
        f"signups_per_ip_per_day = {signups_per_ip}\n"
        f'\n[[models]]\nid = "{FREE}"\nfree = true\n'
    )
    return env_for(redis_url, MEGABRAIN_CONFIG=str(config), OPENAI_BASE_URL=upstream,
                   OPENAI_API_KEY="sk-upstream-test", MEGABRAIN_ADMIN_KEY=ADMIN_KEY,
                   MEGABRAIN_SIGNUP_CREDIT=signup_credit, **extra)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def keys_in(html: str) -> list[str]:
    return _KEY.findall(html)


class Browser:
    """Just enough of a browser for the plain-HTTP checks: cookies, the same Origin, forms with their token."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=20,
                                 headers={"origin": url, **(headers or {})})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def submit(self, page: str, action: str, fields: dict[str, str], **kwargs: Any) -> httpx.Response:
        """GET ``page``, then POST its CSRF token with ``fields`` to ``action`` (as a form would)."""
        token = csrf_of(self.get(page).text)
        return self.http.post(action, data={"csrf_token": token, **fields}, **kwargs)

    def signup(self, email: str, password: str = PASSWORD) -> httpx.Response:
        """The sign-up form alone: it answers "now log in" whether or not the email had an account."""
        return self.submit("/signup", "/signup", {"email": email, "password": password})

    def join(self, email: str, password: str = PASSWORD) -> httpx.Response:
        """Sign up, then log in as a person would: the answer is the Profile with the first key, once."""
        signed_up = self.signup(email, password)
        assert signed_up.status_code == 200, signed_up.text
        return self.login(email, password)

    def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return self.submit("/login", "/login", {"email": email, "password": password})

    def close(self) -> None:
        self.http.close()
