"""Signed-in browser sessions: a random id in a cookie, the session itself server-side with a TTL.

    session:<sha256 of the cookie value>   msgpack Session, expires after ``session_ttl``

Only the hash of the id is stored, like API keys: whoever reads the store cannot ride a session. Logging
out deletes the record, so a copied cookie dies with it. Each session carries its own CSRF token for
the forms it renders (api/pages/forms.py checks it).

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Lax`` (not sent on cross-site POSTs) and
``Secure`` when the request came over https — directly, or through as many trusted proxies as the
client-IP setting trusts, whose ``X-Forwarded-Proto`` then says so. An untrusted client's
``X-Forwarded-Proto`` is ignored, as its ``X-Forwarded-For`` is.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response

from common.names import Names

COOKIE = "mb_session"


class Session(msgspec.Struct, kw_only=True):
    account_id: str
    csrf: str
    created: float


_decoder = msgspec.msgpack.Decoder(Session)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    def __init__(self, redis: Redis, names: Names, ttl: float) -> None:
        self.redis = redis
        self.names = names
        self.ttl = max(1, int(ttl))

    async def create(self, account_id: str) -> tuple[str, Session]:
        """A new session; the returned id goes into the cookie and is stored nowhere."""
        session_id = secrets.token_urlsafe(32)
        session = Session(account_id=account_id, csrf=secrets.token_urlsafe(32), created=time.time())
        await self.redis.set(self.names.session(_hash(session_id)), msgspec.msgpack.encode(session), ex=self.ttl)
        return session_id, session

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 200:
            return None
        raw = await self.redis.get(self.names.session(_hash(session_id)))
        return _decoder.decode(raw) if raw else None

    async def delete(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 200:
            await self.redis.delete(self.names.session(_hash(session_id)))


def is_https(request: Request, trusted_hops: int) -> bool:
    """Did the client reach us over https? Behind ``trusted_hops`` proxies, their X-Forwarded-Proto says."""
    if trusted_hops <= 0:
        return request.url.scheme == "https"
    entries = [item.strip().lower() for header in request.headers.getlist("x-forwarded-proto")
               for item in header.split(",")]
    return len(entries) >= trusted_hops and entries[-trusted_hops] == "https"


def set_cookie(response: Response, name: str, value: str, *, path: str, secure: bool,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=secure, httponly=True, samesite="lax")


def clear_cookie(response: Response, name: str, *, path: str, secure: bool) -> None:
    response.delete_cookie(name, path=path, secure=secure, httponly=True, samesite="lax")
