"""Log-in attempts, counted before the password is checked, in one atomic step; past a limit, 429.

Why before: counted after a failed check, N guesses sent at once all pass the check before any of them
counts (an audit sent 60 at once against a limit of 5: all 60 were tried). So each attempt is counted by
the limit script first (``api/access/limits.py``: all three counters checked, then all counted, or none),
only attempts it lets through reach Argon2, and an attempt that turns out right is given back: only
failures use up the allowance, as before.

Three counters, 15-minute windows:

- per email *and* client IP (``login_failures_per_email_ip``, 5): the lockout a guesser meets; it is theirs
  alone, so a stranger's failures from elsewhere never lock the owner out;
- per email from anywhere (``login_failures_per_email``, 100, far higher): bounds guessing one password from
  many addresses;
- per client IP at any email (``login_failures_per_ip``, 30): bounds trying a few passwords on many accounts.

Counters are keyed by the email's keyed hash (``email_key``), never the email; unknown emails count like
known ones, so the limit does not tell which emails have accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.access.accounts import email_key
from api.access.limits import LOGIN_EMAIL, LOGIN_EMAIL_IP, LOGIN_IP, Counter, Limiter
from common.errors import GatewayError
from common.settings import Limits

WINDOW = 15 * 60


@dataclass
class LoginGuard:
    limiter: Limiter
    limits: Limits
    secret: bytes
    window: int = WINDOW

    def counters(self, ip_subject: str, email: str) -> list[Counter]:
        key = email_key(self.secret, email)
        return [
            self.limiter.attempts(LOGIN_EMAIL_IP, f"{key}:{ip_subject}", self.limits.login_failures_per_email_ip,
                                  self.window),
            self.limiter.attempts(LOGIN_EMAIL, key, self.limits.login_failures_per_email, self.window),
            self.limiter.attempts(LOGIN_IP, ip_subject, self.limits.login_failures_per_ip, self.window),
        ]

    async def attempt(self, counters: list[Counter]) -> GatewayError | None:
        """Count this attempt, or its refusal (429 with ``Retry-After``; 503 when Redis cannot say)."""
        return (await self.limiter.check(counters)).error

    async def succeeded(self, counters: list[Counter]) -> None:
        """A right password: the attempt is given back, and this address's failures at this email forgotten."""
        await self.limiter.give_back(counters[1:])
        await self.limiter.redis.delete(counters[0].key)
