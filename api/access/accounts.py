"""User accounts: a keyed hash of the email, an Argon2id password hash and a created time, in the store.

    account:<id>                 msgpack Account (no email: only a hint such as ``a•••@e•••.org`` to show)
    account:emailh:<hmac>        account id, by the HMAC-SHA256 of the normalised email under the server
                                 secret (common/server_secret.py); SET NX makes emails unique

Why no email in the store: nothing the gateway does needs it back (log-in and sign-up are given the email
and look up its HMAC), and keyed with a secret kept outside the store, a copy of the store does not say
who has an account, even by trying a list of addresses (a bare SHA-256 would). Stores made before this
held the email in the record and a bare SHA-256 index (``account:email:<sha256>``): ``migrate`` rewrites
them at start-up, once (``api/gateway.py``).

Why Argon2id, in a thread and a few at a time: it is the password hash made to be slow and memory-hard
(argon2-cffi's defaults: 64 MiB and tens of milliseconds of CPU per hash), so a stolen store does not
give passwords away. It runs in a thread (argon2-cffi releases the GIL) so the event loop keeps serving,
and at most ``MAX_HASHING`` at once per process (``HashingSlots``): a burst of log-ins waits its turn, up
to ``MAX_WAITING`` requests, and beyond that is refused with 503, instead of taking every core and
gigabytes of memory.

Unknown emails cost the same hash as wrong passwords (``authenticate`` verifies against a dummy hash),
and a sign-up for a taken email the same hash as one for a new email, so the time an answer takes does
not tell which emails have accounts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Callable
from typing import TypeVar

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from common.errors import unavailable
from common.names import Names

log = logging.getLogger(__name__)

MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # bounds the hashing work one request can ask for
MAX_EMAIL = 254
MAX_HASHING = max(1, min(4, os.cpu_count() or 1))  # Argon2 hashes at once per process
MAX_WAITING = 64  # requests waiting for a hashing slot before more are refused (503)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_hasher = PasswordHasher()  # argon2-cffi's defaults are Argon2id (RFC 9106's low-memory profile)
_dummy_hash: str | None = None

T = TypeVar("T")


class Account(msgspec.Struct, kw_only=True):
    id: str
    email_hint: str  # enough of the email for its owner to recognise it: ``a•••@e•••.org``
    password_hash: str
    created: float  # epoch seconds
    first_key_issued: bool = True  # False until the first log-in after sign-up, which creates the first key
    verified: bool = True  # False from a sign-up with SMTP configured until its link is opened (verification.py)


class _LegacyAccount(msgspec.Struct, kw_only=True):
    """A record written before emails left the store (``migrate``)."""

    id: str
    email: str = ""
    email_hint: str = ""
    password_hash: str
    created: float


_decoder = msgspec.msgpack.Decoder(Account)
_legacy_decoder = msgspec.msgpack.Decoder(_LegacyAccount)


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


def email_key(secret: bytes, email: str) -> str:
    """The keyed hash an email is found by (and its log-in attempts counted under): HMAC-SHA256 of the
    normalised email under the server secret."""
    return hmac.new(secret, b"email\0" + normalize_email(email).encode(), hashlib.sha256).hexdigest()


def email_hint(email: str) -> str:
    """``ann@example.org`` → ``a•••@e•••.org``: recognisable to its owner, little to anyone else."""
    local, _, domain = normalize_email(email).partition("@")
    name, dot, tld = domain.rpartition(".")
    return f"{local[:1]}•••@{name[:1]}•••{dot}{tld}" if name else f"{local[:1]}•••@{domain[:1]}•••"


class HashingSlots:
    """At most ``size`` Argon2 computations at once (one instance per process: the Gateway's); at most
    ``waiting`` requests queued for a slot, beyond that a 503 (``temporarily_unavailable``, retry shortly).
    A slot is held until its thread has finished, even if the request that asked is cancelled."""

    def __init__(self, size: int = MAX_HASHING, waiting: int = MAX_WAITING) -> None:
        self.size = size
        self.waiting = waiting
        self.queued = 0
        self.running = 0
        self.most_running = 0  # the high-water mark (tests read it)
        self._semaphore = asyncio.Semaphore(size)

    async def run(self, work: Callable[..., T], *args: object) -> T:
        if self.queued >= self.waiting:
            raise unavailable("Too many sign-ins at once right now. Try again in a moment.", retry_after=2)
        self.queued += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        thread = asyncio.ensure_future(asyncio.to_thread(work, *args))
        thread.add_done_callback(self._release)
        return await asyncio.shield(thread)

    def _release(self, _: object) -> None:
        self.running -= 1
        self._semaphore.release()


async def hash_password(slots: HashingSlots, password: str) -> str:
    return await slots.run(_hasher.hash, password)


async def verify_password(slots: HashingSlots, password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; with ``password_hash=None`` the same work is done and False returned."""
    global _dummy_hash
    if password_hash is None:
        if _dummy_hash is None:
            _dummy_hash = await hash_password(slots, secrets.token_urlsafe(16))
        password_hash = _dummy_hash
        password = ""  # never the dummy's password
    try:
        return await slots.run(_hasher.verify, password_hash, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False


class AccountStore:
    def __init__(self, redis: Redis, names: Names, secret: bytes, slots: HashingSlots) -> None:
        self.redis = redis
        self.names = names
        self.secret = secret
        self.slots = slots

    async def create(self, email: str, password: str, *, verified: bool = True) -> Account | None:
        """A new account, or None when the email already has one (after the same hashing work). Raises
        AccountError on bad input."""
        email = normalize_email(email)
        check_new_credentials(email, password)
        account = Account(id=secrets.token_hex(8), email_hint=email_hint(email),
                          password_hash=await hash_password(self.slots, password), created=time.time(),
                          first_key_issued=False, verified=verified)
        # the record first, then the email claim: a crash in between leaves an unreachable record, never an
        # email that points nowhere and can no longer sign up
        await self.redis.set(self.names.account(account.id), msgspec.msgpack.encode(account))
        if not await self.redis.set(self.names.account_email(email_key(self.secret, email)), account.id, nx=True):
            await self.redis.delete(self.names.account(account.id))
            return None
        log.info("account created id=%s", account.id)
        return account

    async def get(self, account_id: str) -> Account | None:
        raw = await self.redis.get(self.names.account(account_id))
        return _decoder.decode(raw) if raw else None

    async def find(self, email: str) -> Account | None:
        account_id = await self.redis.get(self.names.account_email(email_key(self.secret, email)))
        if not account_id:
            return None
        return await self.get(account_id.decode() if isinstance(account_id, bytes) else account_id)

    async def authenticate(self, email: str, password: str) -> Account | None:
        """The account when email and password match; None for a wrong password and an unknown email alike."""
        account = await self.find(email)
        ok = await verify_password(self.slots, account.password_hash if account else None, password)
        return account if ok and account else None

    async def mark_verified(self, account_id: str) -> Account | None:
        """The account's email was proven (its verification link opened); None when there is no account."""
        account = await self.get(account_id)
        if account is not None and not account.verified:
            account.verified = True
            await self.redis.set(self.names.account(account.id), msgspec.msgpack.encode(account))
        return account

    async def mark_first_key_issued(self, account: Account) -> None:
        """The account's first key was made (at its first log-in, ``api/pages/auth.py``)."""
        account.first_key_issued = True
        await self.redis.set(self.names.account(account.id), msgspec.msgpack.encode(account))

    async def migrate(self) -> int:
        """Rewrite accounts stored before emails left the store: each legacy index entry
        (``account:email:<sha256>``) becomes the keyed one, its record loses the email for a hint, the old
        entry goes. Idempotent (several web processes may run it at once); done once per store (a marker
        key says so); returns how many it moved."""
        done = self.names.key("migrated:email-index")
        if await self.redis.exists(done):
            return 0
        moved = 0
        legacy = self.names.account_email_legacy("*")
        async for name in self.redis.scan_iter(match=legacy, count=500):
            account_id = await self.redis.get(name)
            raw = await self.redis.get(self.names.account(_text(account_id))) if account_id else None
            if raw:
                old = _legacy_decoder.decode(raw)
                if old.email:
                    await self.redis.set(self.names.account_email(email_key(self.secret, old.email)), old.id, nx=True)
                    account = Account(id=old.id, email_hint=email_hint(old.email), password_hash=old.password_hash,
                                      created=old.created)
                    await self.redis.set(self.names.account(old.id), msgspec.msgpack.encode(account))
                    moved += 1
            await self.redis.delete(name)
        await self.redis.set(done, 1)
        if moved:
            log.info("accounts migrated to the keyed email index: %d", moved)
        return moved


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
