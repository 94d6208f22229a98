"""Names of every Redis key, queue and channel the gateway owns, in one place.

Everything lives under the settings' namespace (default ``mb``) so several deployments or test runs can
share one Redis. arq's own per-job keys (``arq:job:<id>`` …) are global, but our job ids are random.
"""

from __future__ import annotations

import secrets


class Names:
    def __init__(self, namespace: str = "mb") -> None:
        self.ns = namespace

    def queue(self, pool: str) -> str:
        """The arq queue (a sorted set) of one provider pool."""
        return f"{self.ns}:queue:{pool}"

    def wake_channel(self, pool: str) -> str:
        """Published to right after an enqueue, so idle workers pick the job up at once."""
        return f"{self.ns}:wake:{pool}"

    def reply_channel(self, instance_id: str) -> str:
        """The single pub/sub channel of one web process; workers publish a request's events here."""
        return f"{self.ns}:reply:{instance_id}"

    def control_channel(self, worker_id: str) -> str:
        """One worker process's control channel: cancels, and jobs handed to it directly (``api/access/limits.py``)."""
        return f"{self.ns}:ctl:{worker_id}"

    def live_workers(self, pool: str) -> str:
        """Sorted set of worker process ids serving a pool, scored by last heartbeat (epoch seconds)."""
        return f"{self.ns}:live:{pool}"

    def idle_workers(self, pool: str) -> str:
        """Sorted set of worker process ids with a free slot on a pool, scored by registration time (epoch
        seconds): the admission script pops one and hands it the job directly (``api/access/limits.py``)."""
        return f"{self.ns}:idle:{pool}"

    def alive(self, worker_id: str) -> str:
        """One worker process's liveness key: set every second with a short TTL, so it vanishes within
        seconds of the process dying however it dies; web processes watch the workers of their requests."""
        return f"{self.ns}:alive:{worker_id}"

    def fence(self, request_id: str) -> str:
        """Which attempt of a request may still settle it, or that it is settled or closed
        (``common/settlement.py``): a superseded attempt can neither answer nor bill."""
        return f"{self.ns}:fence:{request_id}"

    def blob(self, request_id: str) -> str:
        """Short-lived bytes of an upload (an audio file) on its way to a worker."""
        return f"{self.ns}:blob:{request_id}"

    def health(self, scope: str) -> str:
        """Failure/latency counters of a provider or a provider+model (circuit breaker state)."""
        return f"{self.ns}:health:{scope}"

    def generation(self, request_id: str) -> str:
        """One served request's record for ``GET /api/v1/generation`` (msgpack, kept 30+ days)."""
        return f"{self.ns}:gen:{request_id}"

    def stored_response(self, response_id: str) -> str:
        """A stored Responses object with its input items and chain (``api/exchange/stored.py``; JSON, kept
        ``MEGABRAIN_RESPONSE_TTL``)."""
        return f"{self.ns}:resp:{response_id}"

    def answer_events(self, request_id: str) -> str:
        """A detached answer's client events (background, resumable), a stream with entry ids
        ``0-<seq + 1>`` (``api/exchange/background.py``; kept ``MEGABRAIN_RESPONSE_EVENTS_TTL``)."""
        return f"{self.ns}:events:{request_id}"

    def answer_owner(self, request_id: str) -> str:
        """Who may read a detached answer's events, and which web process follows it (JSON, as long as
        its events)."""
        return f"{self.ns}:events:owner:{request_id}"

    def activity(self, account_id: str) -> str:
        """A signed-in user's answered requests, newest last: zset of ``<request id>|<key id>|<model>`` scored
        by settlement time (epoch µs); each one's record is ``generation(request id)`` (the Activity page)."""
        return f"{self.ns}:activity:{account_id}"

    def account(self, account_id: str) -> str:
        """One account's msgpack record (email, Argon2id password hash, created)."""
        return f"{self.ns}:account:{account_id}"

    def account_email(self, email_key: str) -> str:
        """Account id by the keyed hash (HMAC) of the normalised email: uniqueness, without emails in the store."""
        return f"{self.ns}:account:emailh:{email_key}"

    def account_email_legacy(self, email_sha256: str) -> str:
        """The index of stores made before the keyed one (a bare SHA-256), rewritten at start-up."""
        return f"{self.ns}:account:email:{email_sha256}"

    def account_keys(self, account_id: str) -> str:
        """Set of the ids of the API keys an account holds (revoked ones leave it)."""
        return f"{self.ns}:account:keys:{account_id}"

    def account_revoked_keys(self, account_id: str) -> str:
        """Sorted set of an account's latest revoked key ids, by revocation time (bounded)."""
        return f"{self.ns}:account:revoked:{account_id}"

    def session(self, session_hash: str) -> str:
        """A signed-in browser session by the SHA-256 of its cookie value (never the value itself)."""
        return f"{self.ns}:session:{session_hash}"

    def attempts(self, scope: str) -> str:
        """Attempts counted before they are checked (log-ins, admin keys) in the current window: the limit
        script's hash, ``<kind>:<IP subject and/or keyed email hash>`` (``api/access/login_guard.py``)."""
        return f"{self.ns}:rl:att:{scope}"

    def signup_day(self, subject: str) -> str:
        """Sign-ups from one client IP (or IPv6 /64) today (the limit script's hash)."""
        return f"{self.ns}:rl:signupd:{subject}"

    def account_day(self, account_id: str) -> str:
        """The free-model day counter of a signed-in user's keys (the limit script's hash)."""
        return f"{self.ns}:rl:acctd:{account_id}"

    def key(self, suffix: str) -> str:
        return f"{self.ns}:{suffix}"


def new_request_id() -> str:
    return secrets.token_hex(12)
