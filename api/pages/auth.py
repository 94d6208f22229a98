"""Sign up, log in, log out, and the landing page.

Sign-up answers the same whether or not the email already has an account (the same page, status and
hashing work): "log in now". It creates the account when the email is free, and the first log-in of a new
account creates its first key, shown once on the Profile page that log-in answers with (the key exists
only in that response). Telling a taken email apart is for the email itself, once addresses are verified
by mail. A wrong password and an unknown email get the same answer too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.access import verification
from api.access.accounts import AccountError
from api.access.admission import access_context
from api.access.keys import KeyStore
from api.access.login_guard import LoginGuard
from api.pages.forms import Visitor, form_endpoint, visitor
from api.pages.profile import render_profile, site_url
from api.access.sessions import COOKIE, clear_cookie
from common.errors import GatewayError
from common.ledger import Ledger, nanos

WRONG_CREDENTIALS = "The email or the password is wrong."
SIGNED_UP = ("Now log in with this email and password. If the email had no account here, it has one now, "
             "and your first API key is shown when you log in; if it had one, log in with its password.")
FIRST_KEY_NAME = "default"
VERIFIED = "Your email address is verified. Log in to use your account."
LINK_INVALID = "This verification link is invalid, already used or expired. Ask for a new one on your Profile."


async def landing(request: Request) -> Response:
    return (await visitor(request)).render("landing.html")


async def signup_page(request: Request) -> Response:
    who = await visitor(request)
    if who.account:
        return who.redirect("/profile")
    return who.render_anonymous_form("signup.html", status=200 if who.gateway.settings.signup else 403)


@form_endpoint(signed_in=False)
async def signup(who: Visitor, fields: dict[str, str]) -> Response:
    if not who.gateway.settings.signup:
        return who.render("signup.html", status=403)
    limiter = access_context(who.gateway).limiter
    decision = await limiter.check([limiter.signup_day(who.ip_subject,
                                                       who.gateway.settings.limits.signups_per_ip_per_day)])
    if decision.error is not None:
        response = who.render_anonymous_form("signup.html", status=decision.error.status,
                                             error=decision.error.message)
        response.headers.update(decision.error.response_headers())
        return response
    email = fields.get("email", "")
    try:
        smtp = bool(who.gateway.settings.smtp_url)
        account = await who.accounts().create(email, fields.get("password", ""), verified=not smtp)  # None: taken
        if account is not None and smtp:  # the credit waits for the link (api/access/verification.py)
            link = await verification.new_link(who.gateway.redis, who.gateway.names, account.id, site_url(who))
            verification.send_later(who.gateway.settings, verification.message(who.gateway.settings, email, link))
        elif account is not None:
            await grant_signup_credit(who, account.id)
    except AccountError as exc:
        return who.render_anonymous_form("signup.html", status=400, error=str(exc), email=email)
    except GatewayError as exc:  # every hashing slot busy
        return _refused(who, "signup.html", exc, email)
    return who.render_anonymous_form("login.html", notice=SIGNED_UP, email=email)


async def grant_signup_credit(who: Visitor, account_id: str) -> None:
    """``MEGABRAIN_SIGNUP_CREDIT`` to a new account, as a ledger entry applied once (its id names the account)."""
    amount = nanos(who.gateway.settings.signup_credit)
    if amount > 0:
        await Ledger(who.gateway.redis, who.gateway.names).apply(account_id, "grant", amount, note="sign-up credit",
                                                                 entry_id=f"signup-{account_id}")


async def verify(request: Request) -> Response:
    """``GET /verify?token=…``: the link of a verification mail. Marks the account verified and grants the
    sign-up credit, once; a used, expired or unknown link says so and changes nothing."""
    who = await visitor(request)
    account_id = await verification.redeem(who.gateway.redis, who.gateway.names, request.query_params.get("token", ""))
    account = await who.accounts().mark_verified(account_id) if account_id else None
    if account is None:
        return who.render_anonymous_form("login.html", status=400, error=LINK_INVALID)
    await grant_signup_credit(who, account.id)
    if who.account is not None:
        return who.redirect("/profile?verified=1")
    return who.render_anonymous_form("login.html", notice=VERIFIED)


async def login_page(request: Request) -> Response:
    who = await visitor(request)
    if who.account:
        return who.redirect("/profile")
    return who.render_anonymous_form("login.html")


@form_endpoint(signed_in=False)
async def login(who: Visitor, fields: dict[str, str]) -> Response:
    email, password = fields.get("email", ""), fields.get("password", "")
    guard = LoginGuard(access_context(who.gateway).limiter, who.gateway.settings.limits, who.gateway.secret)
    counters = guard.counters(who.ip_subject, email)
    try:
        refusal = await guard.attempt(counters)  # counted before the password is looked at
        if refusal is not None:
            return _refused(who, "login.html", refusal, email)
        account = await who.accounts().authenticate(email, password)
    except GatewayError as exc:  # every hashing slot busy
        return _refused(who, "login.html", exc, email)
    if account is None:
        return who.render_anonymous_form("login.html", status=401, error=WRONG_CREDENTIALS, email=email)
    await guard.succeeded(counters)
    await who.sign_in(account)
    if not account.first_key_issued:  # the first log-in after sign-up: the account's first key, shown once
        await who.accounts().mark_first_key_issued(account)
        created = await KeyStore(who.gateway.redis, who.gateway.names).create(
            FIRST_KEY_NAME, owner=account.id, max_owned=who.gateway.settings.limits.keys_per_account)
        response = await render_profile(who, new_key=created)
    else:
        response = who.redirect("/profile")
    who.set_session_cookie(response)
    return response


def _refused(who: Visitor, template: str, error: GatewayError, email: str) -> Response:
    """A limit or a busy process, on the form's own page, with ``Retry-After``."""
    response = who.render_anonymous_form(template, status=error.status, email=email, error=error.message)
    response.headers.update(error.response_headers())
    return response


@form_endpoint(signed_in=True)
async def logout(who: Visitor, fields: dict[str, str]) -> Response:
    await who.sessions().delete(who.session_id)
    response = who.redirect("/login")
    clear_cookie(response, COOKIE, path=who.cookie_path(), secure=who.https)
    return response
