"""User accounts: an email, an Argon2id password hash and a created time, in the store.

    account:<id>                 msgpack Account
    account:email:<sha256>       account id, by the SHA-256 of the normalised email (SET NX: unique)

Why Argon2id, and in a thread: it is the password hash made to be slow and memory-hard, so a stolen
store does not give passwords away; each hash costs tens of milliseconds of CPU, which must not stall
the event loop every other request runs on (argon2-cffi releases the GIL while it works).

Unknown emails cost the same hash as wrong passwords (``authenticate`` verifies against a dummy hash),
so the time an answer takes does not tell which emails have accounts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
import unicodedata

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from common.names import Names

log = logging.getLogger(__name__)

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # bounds the hashing work one request can ask for
MAX_EMAIL = 254
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_hasher = PasswordHasher()  # argon2-cffi's defaults are Argon2id (RFC 9106's low-memory profile)
_dummy_hash: str | None = None


class Account(msgspec.Struct, kw_only=True):
    id: str
    email: str
    password_hash: str
    created: float  # epoch seconds


_decoder = msgspec.msgpack.Decoder(Account)


class AccountError(ValueError):
    """Input that cannot make an account; the message is shown to the person as is."""


def normalize_email(raw: str) -> str:
    """One spelling per address: NFKC, trimmed, lower-cased (so Ann@X.org and ann@x.org are one account)."""
    return unicodedata.normalize("NFKC", raw).strip().lower()


def check_new_credentials(email: str, password: str) -> None:
    if len(email) > MAX_EMAIL or not _EMAIL.match(email):
        raise AccountError("Enter a valid email address.")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"Choose a password of at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"Choose a password of at most {MAX_PASSWORD} characters.")


def email_hash(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with ``password_hash=None`` the same work is done and False returned."""
    global _dummy_hash
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await hash_password(secrets.token_urlsafe(16))
        password_hash = _dummy_hash
        password = ""  # never the dummy's password
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False


class AccountStore:
    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis = redis
        self.names = names

    async def create(self, email: str, password: str) -> Account | None:
        """A new account, or None when the email already has one. Raises AccountError on bad input."""
        email = normalize_email(email)
        check_new_credentials(email, password)
        account = Account(id=secrets.token_hex(8), email=email, password_hash=await hash_password(password),
                          created=time.time())
        # the record first, then the email claim: a crash in between leaves an unreachable record, never an
        # email that points nowhere and can no longer sign up
        await self.redis.set(self.names.account(account.id), msgspec.msgpack.encode(account))
        if not await self.redis.set(self.names.account_email(email_hash(email)), account.id, nx=True):
            await self.redis.delete(self.names.account(account.id))
            return None
        log.info("account created id=%s", account.id)
        return account

    async def get(self, account_id: str) -> Account | None:
        raw = await self.redis.get(self.names.account(account_id))
        return _decoder.decode(raw) if raw else None

    async def find(self, email: str) -> Account | None:
        account_id = await self.redis.get(self.names.account_email(email_hash(normalize_email(email))))
        if not account_id:
            return None
        return await self.get(account_id.decode() if isinstance(account_id, bytes) else account_id)

    async def authenticate(self, email: str, password: str) -> Account | None:
        """The account when email and password match; None for a wrong password and an unknown email alike."""
        account = await self.find(email)
        ok = await verify_password(account.password_hash if account else None, password)
        return account if ok and account else None
