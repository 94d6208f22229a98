"""Accounts over plain HTTP, through a real gateway on a real Redis: sign-up, sessions and their cookie,
CSRF and Origin checks, the log-in limit, duplicate and weak sign-ups, owned keys, and the API's way in."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from api.access.accounts import normalize_email
from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness
from tests.pages import ADMIN_KEY, FREE, PAID, PASSWORD, Browser, accounts_env, csrf_of, keys_in

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def start(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path
          ) -> Iterator[Callable[..., GatewayHarness]]:
    started: list[GatewayHarness] = []

    def run(**options: object) -> GatewayHarness:
        env = accounts_env(redis_url, fake_openai[1], tmp_path, **options)  # type: ignore[arg-type]
        harness = GatewayHarness.from_env(env).start()
        started.append(harness)
        return harness

    yield run
    for harness in started:
        harness.stop()


@pytest.fixture
def gw(start: Callable[..., GatewayHarness]) -> GatewayHarness:
    return start()


def chat(gw: GatewayHarness, key: str | None, model: str = PAID, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                      headers=headers, timeout=20)


def store_dump(gw: GatewayHarness) -> list[bytes]:
    """Every key name and string/hash value in the gateway's namespace (to look for secrets in)."""
    async def dump() -> list[bytes]:
        redis = connect(gw.settings.redis_url)
        out: list[bytes] = []
        try:
            async for name in redis.scan_iter(match=f"{gw.settings.namespace}:*"):
                out.append(name)
                kind = await redis.type(name)
                if kind == b"string":
                    out.append(await redis.get(name) or b"")
                elif kind == b"hash":
                    for k, v in (await redis.hgetall(name)).items():
                        out += [k, v]
                elif kind == b"set":
                    out += list(await redis.smembers(name))
        finally:
            await redis.aclose()
        return out
    return gw.run(dump())


def cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    assert headers, f"no {name} cookie set"
    return headers[-1]


def test_signup_then_first_login_shows_the_key_once_and_the_key_works(gw: GatewayHarness) -> None:
    browser = Browser(gw.url)
    signed_up = browser.signup("Ann@Example.org")
    assert signed_up.status_code == 200 and "Now log in" in signed_up.text
    assert keys_in(signed_up.text) == [] and "mb_session" not in signed_up.cookies
    page = browser.login("ann@example.org")
    assert page.status_code == 200  # the first log-in answers with the Profile and the first key
    keys = keys_in(page.text)
    assert len(keys) == 1
    key = keys[0]
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)
    assert client.chat.completions.create(model=PAID, messages=MESSAGES).choices[0].message.content
    profile = browser.get("/profile")
    assert profile.status_code == 200
    assert "a•••@e•••.org" in profile.text and "ann@example.org" not in profile.text
    assert key[:8] in profile.text and key not in profile.text  # the prefix only, from now on
    again = Browser(gw.url).login("ann@example.org")  # later log-ins make no key
    assert again.status_code == 303 and keys_in(Browser(gw.url).login("ann@example.org").text) == []
    stored = b"\n".join(store_dump(gw))
    assert b"$argon2id$" in stored and PASSWORD.encode() not in stored
    session_id = browser.http.cookies["mb_session"]
    assert session_id.encode() not in stored and key.encode() not in stored  # hashes only
    # no email in the store, neither as text nor as its bare SHA-256 (a list of addresses would find it)
    assert b"ann@example.org" not in stored.lower()
    assert hashlib.sha256(b"ann@example.org").hexdigest().encode() not in stored


def test_signup_answers_the_same_whether_the_email_has_an_account(gw: GatewayHarness) -> None:
    Browser(gw.url).join("taken@example.org")
    taken = Browser(gw.url).signup("taken@example.org", "another password here")
    free = Browser(gw.url).signup("fresh@example.org", "another password here")
    assert taken.status_code == free.status_code == 200
    assert taken.headers.get_list("set-cookie") == free.headers.get_list("set-cookie") == []  # nobody signed in
    assert (taken.text.replace(csrf_of(taken.text), "").replace("taken", "")
            == free.text.replace(csrf_of(free.text), "").replace("fresh", ""))
    assert Browser(gw.url).login("taken@example.org", "another password here").status_code == 401  # unchanged
    assert Browser(gw.url).login("taken@example.org").status_code == 303
    assert Browser(gw.url).login("fresh@example.org", "another password here").status_code == 200


def test_session_cookie_flags_and_https_through_a_trusted_proxy_only(start: Callable[..., GatewayHarness]) -> None:
    plain = start()
    flags = cookie_header(Browser(plain.url).join("plain@example.org"), "mb_session").lower()
    assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
    assert "secure" not in flags
    spoofed = Browser(plain.url, {"x-forwarded-proto": "https"}).join("spoof@example.org")
    assert "secure" not in cookie_header(spoofed, "mb_session").lower()  # no proxy is trusted: ignored

    proxied = start(hops=1)
    via_proxy = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    origin = "https://" + proxied.url.split("://", 1)[1]  # what the browser saw
    form = httpx.get(proxied.url + "/signup", headers=via_proxy)
    assert "secure" in cookie_header(form, "mb_form").lower()
    # httpx keeps Secure cookies off plain http, so hand the form's cookie back as the browser would
    posted = {**via_proxy, "origin": origin, "cookie": f"mb_form={form.cookies['mb_form']}"}
    fields = {"csrf_token": csrf_of(form.text), "email": "tls@example.org", "password": PASSWORD}
    assert httpx.post(proxied.url + "/signup", headers=posted, data=fields).status_code == 200
    logged_in = httpx.post(proxied.url + "/login", headers=posted, data=fields)
    flags = cookie_header(logged_in, "mb_session").lower()
    assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags


def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(gw: GatewayHarness) -> None:
    anonymous = Browser(gw.url)
    anonymous.get("/signup")
    assert anonymous.http.post("/signup", data={"email": "x@example.org", "password": PASSWORD}).status_code == 403
    evil = anonymous.submit("/signup", "/signup", {"email": "x@example.org", "password": PASSWORD},
                            headers={"origin": "https://evil.example"})
    assert evil.status_code == 403
    null = anonymous.submit("/signup", "/signup", {"email": "x@example.org", "password": PASSWORD},
                            headers={"origin": "null"})
    assert null.status_code == 403
    assert anonymous.login("x@example.org").status_code == 401  # none of them made an account

    browser = Browser(gw.url)
    key = keys_in(browser.join("csrf@example.org").text)[0]
    key_id = httpx.get(gw.url + "/usage", headers={"authorization": f"Bearer {key}"}).json()["key_id"]
    token = csrf_of(browser.get("/profile").text)
    assert browser.http.post("/logout", data={}).status_code == 403
    assert browser.http.post("/logout", data={"csrf_token": token},
                             headers={"origin": "https://evil.example"}).status_code == 403
    assert browser.http.post("/profile/keys", data={"name": "x"}).status_code == 403
    assert browser.http.post(f"/profile/keys/{key_id}/revoke", data={"csrf_token": "wrong" * 8}).status_code == 403
    assert browser.get("/profile").status_code == 200  # still signed in
    assert chat(gw, key).status_code == 200  # and the key still works
    # the pre-session token of the log-in form is no session's token
    assert browser.http.post(f"/profile/keys/{key_id}/revoke",
                             data={"csrf_token": Browser(gw.url).get("/login").cookies.get("mb_form", "")}
                             ).status_code == 403


def test_logout_deletes_the_session(gw: GatewayHarness) -> None:
    browser = Browser(gw.url)
    browser.join("bye@example.org")
    session_id = browser.http.cookies["mb_session"]
    out = browser.submit("/profile", "/logout", {})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    cleared = cookie_header(out, "mb_session").lower()
    assert 'mb_session=""' in cleared and "max-age=0" in cleared
    replay = httpx.get(gw.url + "/profile", cookies={"mb_session": session_id}, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"] == "/login"


def test_unknown_email_and_wrong_password_get_the_same_answer(gw: GatewayHarness) -> None:
    Browser(gw.url).join("known@example.org")
    wrong = Browser(gw.url).login("known@example.org", "not the password")
    unknown = Browser(gw.url).login("nobody@example.org", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    message = "The email or the password is wrong."
    assert message in wrong.text and message in unknown.text
    assert wrong.text.replace(csrf_of(wrong.text), "").replace("known", "") == \
        unknown.text.replace(csrf_of(unknown.text), "").replace("nobody", "")
    good = Browser(gw.url).login("KNOWN@example.org ")
    assert good.status_code == 303 and good.headers["location"] == "/profile"


def test_login_attempts_are_limited_per_email_and_address_and_per_ip(start: Callable[..., GatewayHarness]) -> None:
    gw = start(hops=1, per_email_ip=3, per_email=6, per_ip=4)
    owner = {"x-forwarded-for": "198.51.100.7"}
    Browser(gw.url, owner).join("target@example.org")
    stranger = {"x-forwarded-for": "198.51.100.8"}
    for _ in range(3):
        assert Browser(gw.url, stranger).login("target@example.org", "guess" * 3).status_code == 401
    blocked = Browser(gw.url, stranger).login("target@example.org")  # right password, from the guesser's address
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "Too many log-in attempts" in blocked.text
    # the stranger's failures are theirs: the owner, from their own address, is not locked out
    assert Browser(gw.url, owner).login("target@example.org").status_code == 303
    # ... until the email-wide limit (far higher in production) is reached from many addresses
    for n in range(3):
        assert Browser(gw.url, {"x-forwarded-for": f"198.51.100.{20 + n}"}).login(
            "target@example.org", "guess" * 3).status_code == 401
    assert Browser(gw.url, owner).login("target@example.org").status_code == 429

    attacker = {"x-forwarded-for": "192.0.2.66"}
    for i in range(4):
        assert Browser(gw.url, attacker).login(f"victim{i}@example.org", "guess" * 3).status_code == 401
    assert Browser(gw.url, attacker).login("target2@example.org").status_code == 429
    Browser(gw.url, owner).join("other@example.org")
    assert Browser(gw.url, owner).login("other@example.org").status_code == 303  # another IP is unaffected


def test_short_password_and_bad_email_are_refused(gw: GatewayHarness) -> None:
    short = Browser(gw.url).signup("short@example.org", "123456789")
    assert short.status_code == 400 and "at least 10 characters" in short.text
    assert Browser(gw.url).login("short@example.org", "123456789").status_code == 401
    assert Browser(gw.url).signup("not-an-email", PASSWORD).status_code == 400
    assert normalize_email(" Dup@EXAMPLE.org ") == "dup@example.org"


def test_signups_are_limited_per_client_ip(start: Callable[..., GatewayHarness]) -> None:
    gw = start(hops=1, signups_per_ip=2)
    crowd = {"x-forwarded-for": "203.0.113.50"}
    assert [Browser(gw.url, crowd).signup(f"s{i}@example.org").status_code for i in range(2)] == [200, 200]
    third = Browser(gw.url, crowd).signup("s2@example.org")
    assert third.status_code == 429 and "Too many sign-ups" in third.text and int(third.headers["retry-after"]) > 0
    assert Browser(gw.url, crowd).login("s2@example.org").status_code == 401  # no account was made
    assert Browser(gw.url, {"x-forwarded-for": "203.0.113.51"}).signup("s2@example.org").status_code == 200


def test_create_and_revoke_keys_on_the_profile_page(gw: GatewayHarness) -> None:
    browser = Browser(gw.url)
    first = keys_in(browser.join("keys@example.org").text)[0]
    created = browser.submit("/profile", "/profile/keys", {"name": "laptop"})
    assert created.status_code == 201
    second = [k for k in keys_in(created.text) if k != first][0]
    assert chat(gw, second).status_code == 200
    listing = httpx.get(gw.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]
    mine = {k["name"]: k for k in listing if k["owner"]}
    assert set(mine) == {"default", "laptop"} and len({k["owner"] for k in mine.values()}) == 1
    revoked = browser.submit("/profile", f"/profile/keys/{mine['default']['id']}/revoke", {})
    assert revoked.status_code == 303
    assert chat(gw, first).status_code == 401
    assert chat(gw, second).status_code == 200
    # someone else's key cannot be revoked from this account's page; the operator can revoke anything
    other = Browser(gw.url)
    other_key = keys_in(other.join("other@example.org").text)[0]
    other_id = httpx.get(gw.url + "/usage", headers={"authorization": f"Bearer {other_key}"}).json()["key_id"]
    assert browser.submit("/profile", f"/profile/keys/{other_id}/revoke", {}).status_code == 404
    assert chat(gw, other_key).status_code == 200
    assert httpx.delete(gw.url + f"/admin/keys/{mine['laptop']['id']}",
                        headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert chat(gw, second).status_code == 401
    assert browser.get("/profile").text.count(">revoked<") == 2


def test_api_errors_name_the_signup_page(start: Callable[..., GatewayHarness]) -> None:
    relative = start(anon_per_day=1)
    paid = chat(relative, None)
    assert paid.status_code == 401 and paid.json()["error_type"] == "paid_model_auth_required"
    assert paid.json()["error"]["message"].endswith("at /signup")
    assert chat(relative, None, FREE).status_code == 200
    promo = chat(relative, None, FREE)
    assert promo.json()["error_type"] == "promotion_limit_reached"
    assert "/signup" in promo.json()["error"]["message"]

    public = start(MEGABRAIN_PUBLIC_URL="https://gw.example.com/", MEGABRAIN_MOUNT_PREFIX="/llm")
    message = httpx.post(public.url + "/llm/v1/chat/completions", json={"model": PAID, "messages": MESSAGES}
                         ).json()["error"]["message"]
    assert message.endswith("at https://gw.example.com/llm/signup")
    assert Browser(public.url + "/llm").get("/signup").status_code == 200
    assert 'href="/llm/signup"' in httpx.get(public.url + "/llm/").text  # the landing page, under the prefix
    assert httpx.get(public.url + "/signup").status_code == 404  # pages live under the prefix


def test_signup_can_be_turned_off(start: Callable[..., GatewayHarness]) -> None:
    gw = start(MEGABRAIN_SIGNUP="off")
    page = httpx.get(gw.url + "/signup")
    assert page.status_code == 403 and "Sign-up is turned off" in page.text
    refused = httpx.post(gw.url + "/signup", data={"email": "a@example.org", "password": PASSWORD})
    assert refused.status_code == 403
    assert "/signup" not in chat(gw, None).json()["error"]["message"]
    assert 'href="/signup"' not in httpx.get(gw.url + "/").text
    assert httpx.get(gw.url + "/login").status_code == 200


def test_signed_in_users_get_a_larger_free_allowance(start: Callable[..., GatewayHarness]) -> None:
    gw = start(hops=1, anon_per_day=1, user_per_day=3)
    ip = {"x-forwarded-for": "198.51.100.30"}
    assert chat(gw, None, FREE, **ip).status_code == 200
    assert chat(gw, None, FREE, **ip).json()["error_type"] == "promotion_limit_reached"
    browser = Browser(gw.url, ip)
    key = keys_in(browser.join("free@example.org").text)[0]
    second = keys_in(browser.submit("/profile", "/profile/keys", {"name": "two"}).text)
    second_key = [k for k in second if k != key][0]
    assert [chat(gw, k, FREE, **ip).status_code for k in (key, second_key, key)] == [200, 200, 200]
    over = chat(gw, second_key, FREE, **ip)  # the allowance is the account's, whichever key
    assert over.status_code == 429 and "free allowance of 3" in over.json()["error"]["message"]
    assert chat(gw, key, PAID, **ip).status_code == 200  # paid models are not part of it
    assert "3 / 3" in browser.get("/profile").text


def test_no_password_session_id_or_key_in_the_logs(gw: GatewayHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    browser = Browser(gw.url)
    key = keys_in(browser.join("quiet@example.org").text)[0]
    browser.submit("/profile", "/logout", {})
    browser.login("quiet@example.org", "wrong password!")
    browser.login("quiet@example.org")
    session_id = browser.http.cookies["mb_session"]
    assert chat(gw, key).status_code == 200
    assert "account created" in caplog.text  # logging was captured at all
    for secret in (PASSWORD, "wrong password!", session_id, key, key[3:]):
        assert secret not in caplog.text
