"""Failed log-ins counted per client IP and per email; past the limit, 429 until the window ends.

Both counters matter: per email stops guessing one person's password from many addresses, per IP stops
one client trying a few passwords on many accounts. Only failures count, so a person who types their
password right is never slowed down by their own earlier successes. Unknown emails are counted like
known ones, so the limit does not tell which emails have accounts.

    login:fail:ip:<subject>      count, expires WINDOW seconds after the first failure
    login:fail:email:<sha256>    likewise
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from api.access.accounts import email_hash, normalize_email
from common.names import Names

WINDOW = 15 * 60


@dataclass
class LoginGuard:
    redis: Redis
    names: Names
    per_email: int  # Limits.login_failures_per_email
    per_ip: int
    window: int = WINDOW

    def _keys(self, ip_subject: str, email: str) -> list[str]:
        return [self.names.login_failures(f"ip:{ip_subject}"),
                self.names.login_failures(f"email:{email_hash(normalize_email(email))}")]

    async def blocked_for(self, ip_subject: str, email: str) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        ip_key, email_key = self._keys(ip_subject, email)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(ip_key).get(email_key).ttl(ip_key).ttl(email_key)
            ip_count, email_count, ip_ttl, email_ttl = await pipe.execute()
        waits = []
        if int(ip_count or 0) >= self.per_ip:
            waits.append(ip_ttl)
        if int(email_count or 0) >= self.per_email:
            waits.append(email_ttl)
        return max((max(1, int(w)) for w in waits), default=0)

    async def failed(self, ip_subject: str, email: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(ip_subject, email):
                pipe.set(key, 0, ex=self.window, nx=True).incr(key)  # the window starts at the first failure
            await pipe.execute()

    async def succeeded(self, email: str) -> None:
        """A right password clears the email's failures (not the IP's: others may share it)."""
        await self.redis.delete(self._keys("-", email)[1])
