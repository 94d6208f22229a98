"""Sign up, log in, log out, and the landing page.

Sign-up signs the person in and creates their first key, shown once on the Profile page it answers
with (the key exists only in that response). A wrong password and an unknown email get the same answer;
a taken email is refused without saying more than that it cannot be used.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.access.accounts import AccountError
from api.access.admission import access_context
from api.access.keys import KeyStore
from api.access.login_guard import LoginGuard
from api.pages.forms import Visitor, form_endpoint, visitor
from api.pages.profile import render_profile
from api.access.sessions import COOKIE, clear_cookie

WRONG_CREDENTIALS = "The email or the password is wrong."
TAKEN = "This email cannot be used to sign up. If you already have an account, log in."
FIRST_KEY_NAME = "default"


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
        account = await who.accounts().create(email, fields.get("password", ""))
    except AccountError as exc:
        return who.render_anonymous_form("signup.html", status=400, error=str(exc), email=email)
    if account is None:
        return who.render_anonymous_form("signup.html", status=400, error=TAKEN, email=email)
    await who.sign_in(account)
    record, plaintext = await KeyStore(who.gateway.redis, who.gateway.names).create(FIRST_KEY_NAME,
                                                                                   owner=account.id)
    response = await render_profile(who, new_key=(record, plaintext), status=201)
    who.set_session_cookie(response)
    return response


async def login_page(request: Request) -> Response:
    who = await visitor(request)
    if who.account:
        return who.redirect("/profile")
    return who.render_anonymous_form("login.html")


@form_endpoint(signed_in=False)
async def login(who: Visitor, fields: dict[str, str]) -> Response:
    email, password = fields.get("email", ""), fields.get("password", "")
    limits = who.gateway.settings.limits
    guard = LoginGuard(who.gateway.redis, who.gateway.names, limits.login_failures_per_email,
                       limits.login_failures_per_ip)
    wait = await guard.blocked_for(who.ip_subject, email)
    if wait:
        response = who.render_anonymous_form(
            "login.html", status=429, email=email,
            error=f"Too many failed log-ins. Try again in {max(1, round(wait / 60))} min.")
        response.headers["retry-after"] = str(wait)
        return response
    account = await who.accounts().authenticate(email, password)
    if account is None:
        await guard.failed(who.ip_subject, email)
        return who.render_anonymous_form("login.html", status=401, error=WRONG_CREDENTIALS, email=email)
    await guard.succeeded(email)
    await who.sign_in(account)
    response = who.redirect("/profile")
    who.set_session_cookie(response)
    return response


@form_endpoint(signed_in=True)
async def logout(who: Visitor, fields: dict[str, str]) -> Response:
    await who.sessions().delete(who.session_id)
    response = who.redirect("/login")
    clear_cookie(response, COOKIE, path=who.cookie_path(), secure=who.https)
    return response
