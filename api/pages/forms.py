"""What every page shares: templates, the signed-in user, form bodies, CSRF and Origin checks.

Why two kinds of CSRF token: forms of a signed-in user carry the session's own token (api/access/sessions.py);
the sign-up and log-in forms come before any session, so they carry a random token that is also set as
an ``HttpOnly`` cookie (double submit) — a foreign site can make a browser send the cookie, but cannot
read it to put it in the form. Either way a form from a foreign ``Origin`` is refused as well.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from api.access.accounts import Account, AccountStore
from api.access.admission import request_client_ip
from api.exchange.body import read_body
from api.access.client_ip import rate_limit_subject
from api.gateway import Gateway
from api.access.sessions import COOKIE, Session, SessionStore, clear_cookie, is_https, set_cookie

FORM_COOKIE = "mb_form"  # the pre-session CSRF token of the sign-up and log-in forms
MAX_FORM_BYTES = 8192

# Pages are the browser's: nothing cached, never framed, no script, forms post only to us.
PAGE_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters["datetime"] = lambda epoch: dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
templates = Jinja2Templates(env=_env)


class FormRefused(Exception):
    """A state-changing form without a valid CSRF token or from a foreign origin: 403."""


@dataclass
class Visitor:
    """Who is looking at a page: a signed-in account (with its session) or nobody."""

    gateway: Gateway
    request: Request
    session_id: str | None = None
    session: Session | None = None
    account: Account | None = None

    @property
    def base(self) -> str:
        return self.gateway.settings.mount_prefix

    @property
    def https(self) -> bool:
        return is_https(self.request, self.gateway.settings.limits.trusted_proxy_hops)

    @property
    def ip_subject(self) -> str:
        ip = request_client_ip(self.request, self.gateway.settings.limits.trusted_proxy_hops)
        return rate_limit_subject(ip) if ip else "unknown"

    def sessions(self) -> SessionStore:
        return SessionStore(self.gateway.redis, self.gateway.names, self.gateway.settings.session_ttl)

    def accounts(self) -> AccountStore:
        return AccountStore(self.gateway.redis, self.gateway.names, self.gateway.secret, self.gateway.hashing)

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("csrf", self.session.csrf if self.session else "")
        return templates.TemplateResponse(
            self.request, template,
            {"base": self.base, "account": self.account, "signup_enabled": self.gateway.settings.signup,
             **context},
            status_code=status, headers=PAGE_HEADERS)

    def redirect(self, path: str) -> Response:
        return RedirectResponse(self.base + path, status_code=303, headers=PAGE_HEADERS)

    def cookie_path(self) -> str:
        return self.base or "/"

    async def sign_in(self, account: Account) -> None:
        """Start a session for ``account``: always a fresh id (no session fixation), the old one deleted."""
        await self.sessions().delete(self.session_id)
        self.session_id, self.session = await self.sessions().create(account.id)
        self.account = account

    def set_session_cookie(self, response: Response) -> None:
        assert self.session_id is not None
        set_cookie(response, COOKIE, self.session_id, path=self.cookie_path(), secure=self.https,
                   max_age=int(self.gateway.settings.session_ttl))
        clear_cookie(response, FORM_COOKIE, path=self.cookie_path(), secure=self.https)

    def form_token(self) -> tuple[str, bool]:
        """The pre-session CSRF token (and whether it is new, so the page must set its cookie)."""
        token = self.request.cookies.get(FORM_COOKIE, "")
        if 20 <= len(token) <= 100:
            return token, False
        return secrets.token_urlsafe(32), True

    def render_anonymous_form(self, template: str, status: int = 200, **context: Any) -> Response:
        token, new = self.form_token()
        response = self.render(template, status, csrf=token, **context)
        if new:
            set_cookie(response, FORM_COOKIE, token, path=self.cookie_path(), secure=self.https)
        return response

    async def form(self, *, signed_in: bool) -> dict[str, str]:
        """The posted fields, after the Origin and CSRF checks (raises FormRefused)."""
        if not self.same_origin():
            raise FormRefused("foreign origin")
        body = await read_body(self.request, MAX_FORM_BYTES)
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        expected = (self.session.csrf if self.session else "") if signed_in else self.request.cookies.get(
            FORM_COOKIE, "")
        presented = fields.get("csrf_token", "")
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise FormRefused("missing or wrong CSRF token")
        return fields

    def same_origin(self) -> bool:
        """A form posted from our own pages. Browsers send Origin on every POST; none at all is let
        through to the token check (old clients, curl), ``null`` and other sites are not."""
        origin = self.request.headers.get("origin")
        if origin is None:
            return True
        ours = {f"{'https' if self.https else 'http'}://{self.request.headers.get('host', '')}".lower()}
        public = self.gateway.settings.public_url
        if public:
            parts = urlsplit(public)
            ours.add(f"{parts.scheme}://{parts.netloc}".lower())
        return origin.strip().lower() in ours


async def visitor(request: Request) -> Visitor:
    """The request's visitor; a cookie whose session is gone (logged out, expired) counts as nobody."""
    gateway: Gateway = request.app.state.gateway
    found = Visitor(gateway, request, request.cookies.get(COOKIE))
    found.session = await found.sessions().get(found.session_id)
    if found.session is not None:
        found.account = await found.accounts().get(found.session.account_id)
        if found.account is None:
            found.session = None
    return found


def refused(visitor: Visitor) -> Response:
    return visitor.render("refused.html", status=403)


FormHandler = Callable[[Visitor, dict[str, str]], Awaitable[Response]]


def form_endpoint(*, signed_in: bool) -> Callable[[FormHandler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a POST handler: its form is checked first (403 page when refused), and with ``signed_in``
    nobody signed in is sent to the log-in page."""
    def wrap(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            who = await visitor(request)
            if signed_in and who.account is None:
                return who.redirect("/login")
            try:
                fields = await who.form(signed_in=signed_in)
            except FormRefused:
                return refused(who)
            return await handler(who, fields)
        return endpoint
    return wrap
