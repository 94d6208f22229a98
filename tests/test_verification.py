"""Verified email before sign-up credit (api/access/verification.py), with a real local SMTP server
(aiosmtpd) catching the mail the gateway sends through aiosmtplib.

With SMTP configured, a new account gets no credit until its link is opened (free models work meanwhile);
the link works once; a new one can be asked for on the Profile with the account's own address, a few per
hour. Neither the address nor the token appears in the store in clear.
"""

from __future__ import annotations

import email
import re
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import free_port
from tests.harness import GatewayHarness
from tests.pages import FREE, PAID, Browser, accounts_env, keys_in

LINK = re.compile(r"(http://\S+/verify\?token=[A-Za-z0-9_\-]+)")


class Mailbox:
    """aiosmtpd's handler: every message it accepts, and an event per arrival."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.arrived:
            self.messages.append(email.message_from_bytes(envelope.content))  # type: ignore[attr-defined]
            self.arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 30) -> list[Message]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.messages) >= count, timeout), "no mail arrived"
        return self.messages

    @staticmethod
    def link(message: Message) -> str:
        body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
        found = LINK.search(body)
        assert found, body
        return found.group(1)


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def gw(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path,
       mailbox: tuple[Mailbox, int]) -> Iterator[GatewayHarness]:
    env = accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="2",
                       MEGABRAIN_SMTP_URL=f"smtp://127.0.0.1:{mailbox[1]}",
                       MEGABRAIN_MAIL_FROM="Gateway <gw@example.org>")
    with GatewayHarness.from_env(env) as harness:
        yield harness


def chat(gw: GatewayHarness, key: str, model: str = PAID) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user",
                      "content": "hi"}], "max_tokens": 20}, headers={"authorization": f"Bearer {key}"}, timeout=30)


def total_credits(gw: GatewayHarness, key: str) -> float:
    return httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {key}"},
                     timeout=10).json()["data"]["total_credits"]


def test_the_signup_credit_waits_for_the_verified_address(gw: GatewayHarness, mailbox: tuple[Mailbox, int]) -> None:
    box, _ = mailbox
    browser = Browser(gw.url)
    key = keys_in(browser.join("verify.me@example.org").text)[0]
    mail = box.wait_for(1)[0]
    assert mail["To"] == "verify.me@example.org" and mail["From"] == "Gateway <gw@example.org>"
    assert "$2 of credits" in mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    link = Mailbox.link(mail)
    assert link.startswith(gw.url + "/verify?token=")

    assert total_credits(gw, key) == 0 and chat(gw, key).status_code == 402  # no credit before the link
    assert chat(gw, key, FREE).status_code == 200  # free models work meanwhile
    assert 'id="unverified"' in browser.get("/profile").text

    opened = browser.get(link.removeprefix(gw.url))
    assert opened.status_code == 303 and opened.headers["location"] == "/profile?verified=1"
    assert total_credits(gw, key) == 2 and chat(gw, key).status_code == 200
    page = browser.get("/profile?verified=1").text
    assert "Your email address is verified" in page and 'id="unverified"' not in page
    again = httpx.get(link, timeout=10)  # single use: the credit is granted once
    assert again.status_code == 400 and "invalid, already used or expired" in again.text
    assert total_credits(gw, key) == 2

    Browser(gw.url).signup("verify.me@example.org")  # a sign-up for the taken address mails nothing
    assert len(box.messages) == 1
    stored = gw.run(_store_text(gw))
    assert b"verify.me@example.org" not in stored and link.split("token=")[1].encode() not in stored


def test_a_new_link_on_the_profile_for_the_accounts_own_address_a_few_per_hour(
        gw: GatewayHarness, mailbox: tuple[Mailbox, int]) -> None:
    box, _ = mailbox
    browser = Browser(gw.url)
    key = keys_in(browser.join("resend@example.org").text)[0]
    box.wait_for(1)
    wrong = browser.submit("/profile", "/profile/verify", {"email": "someone.else@example.org"})
    assert wrong.status_code == 400 and "not the email address of this account" in wrong.text
    sent = browser.submit("/profile", "/profile/verify", {"email": "Resend@Example.org"})
    assert sent.status_code == 303 and sent.headers["location"] == "/profile?verified=sent"
    second = box.wait_for(2)[1]
    assert second["To"] == "Resend@Example.org"
    browser.submit("/profile", "/profile/verify", {"email": "resend@example.org"})  # the third this hour
    limited = browser.submit("/profile", "/profile/verify", {"email": "resend@example.org"})
    assert limited.status_code == 429 and "Too many verification mails" in limited.text
    assert browser.get(Mailbox.link(second).removeprefix(gw.url)).status_code == 303
    assert total_credits(gw, key) == 2
    forged = browser.http.post("/profile/verify", data={"email": "resend@example.org"})  # no CSRF token
    assert forged.status_code == 403


async def _store_text(gw: GatewayHarness) -> bytes:
    """Every key and string value of the gateway's namespace, to look for the address and the token in."""
    from common.redis import connect

    redis = connect(gw.settings.redis_url)
    out: list[bytes] = []
    try:
        async for name in redis.scan_iter(match=f"{gw.settings.namespace}:*"):
            out.append(name)
            if await redis.type(name) == b"string":
                out.append(await redis.get(name) or b"")
    finally:
        await redis.aclose()
    return b"\n".join(out)
