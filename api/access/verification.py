"""Email verification: with ``MEGABRAIN_SMTP_URL`` set, the sign-up credit waits until the address is proven.

Why: ``MEGABRAIN_SIGNUP_CREDIT`` is money, and an address nobody checks makes it collectable once per
made-up address. With SMTP configured, sign-up mails a link (a random token; only its SHA-256 is stored,
``verify:<hash>`` → account id, single use (GETDEL), expiring after ``TOKEN_TTL``); opening it marks the
account verified and grants the sign-up credit (ledger entry ``signup-<account>``: once, however often a
link is opened). Unverified accounts still use free models. A new link can be asked for on the Profile
(the address typed again: the store keeps only its keyed hash), at most ``RESENDS_PER_HOUR`` per account.

Mail is sent by ``aiosmtplib`` in the background, so neither the sign-up's answer nor its timing says
whether the address had an account. ``smtp://`` uses STARTTLS when the server offers it, ``smtps://`` TLS
from the start; user and password come from the URL. Neither the address nor the token is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib

from common.names import Names
from common.settings import Settings

log = logging.getLogger(__name__)

TOKEN_TTL = 48 * 3600  # seconds a link stays valid
RESENDS_PER_HOUR = 3
_background: set[asyncio.Task[Any]] = set()  # sends in flight (a reference, so none is collected early)


def token_key(names: Names, token: str) -> str:
    return names.key(f"verify:{hashlib.sha256(token.encode()).hexdigest()}")


async def new_link(redis: Any, names: Names, account_id: str, base_url: str) -> str:
    """A fresh single-use link for ``account_id`` (earlier links stay valid until used or expired)."""
    token = secrets.token_urlsafe(32)
    await redis.set(token_key(names, token), account_id, ex=TOKEN_TTL)
    return f"{base_url}/verify?token={token}"


async def redeem(redis: Any, names: Names, token: str) -> str | None:
    """The account a link was for, once: the token is gone afterwards. None: unknown, used or expired."""
    if not token or len(token) > 200:
        return None
    account = await redis.getdel(token_key(names, token))
    return account.decode() if isinstance(account, bytes) else account


def message(settings: Settings, to: str, link: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = settings.mail_from
    mail["To"] = to
    mail["Subject"] = "Verify your email for Megabrain Gateway"
    credit = settings.signup_credit
    mail.set_content(
        "Open this link to verify your email address"
        + (f" and receive your ${credit} of credits" if credit not in ("", "0") else "") + ":\n\n"
        + f"{link}\n\nIt works once, for {TOKEN_TTL // 3600} hours. If you did not sign up, ignore this mail.\n")
    return mail


async def send(settings: Settings, mail: EmailMessage) -> None:
    """Send one mail through ``MEGABRAIN_SMTP_URL``; failures are logged (without the address), not raised."""
    assert settings.smtp_url
    url = urlsplit(settings.smtp_url)
    try:
        await aiosmtplib.send(
            mail, hostname=url.hostname or "localhost", port=url.port or (465 if url.scheme == "smtps" else 25),
            username=unquote(url.username) if url.username else None,
            password=unquote(url.password) if url.password else None,
            use_tls=url.scheme == "smtps", start_tls=None if url.scheme == "smtp" else False, timeout=20)
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.warning("verification mail not sent: %s", type(exc).__name__)


def send_later(settings: Settings, mail: EmailMessage) -> None:
    """``send`` in the background: the request that asked answers at once."""
    task = asyncio.get_running_loop().create_task(send(settings, mail))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def wait_for_mail() -> None:
    """Let the sends in flight finish (shutdown, tests)."""
    if _background:
        await asyncio.gather(*list(_background), return_exceptions=True)
