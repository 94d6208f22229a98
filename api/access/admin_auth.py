"""The operator's keys: ``MEGABRAIN_ADMIN_KEY`` for ``/admin/*``, it or ``MEGABRAIN_METRICS_KEY`` for ``/metrics``.

Each attempt is counted per client IP before the key is compared (in constant time), in the same atomic
limit script as everything else (``api/access/limits.py``), and given back when the key is right: so only
wrong keys use up the allowance (``ADMIN_ATTEMPTS`` per ``WINDOW``; then 429), and a burst of guesses sent at
once counts every one. Every wrong key is logged as a warning with the client address and path, never the
key sent. Keys shorter than 32 characters are refused at start-up (``common/server_secret.py``): an audit
found a short one by guessing in seconds.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request

from api.access.admission import access_context, request_client_ip
from api.access.check import bearer_token
from api.access.client_ip import rate_limit_subject
from api.access.limits import ADMIN_IP
from common.errors import GatewayError

if TYPE_CHECKING:
    from api.gateway import Gateway

log = logging.getLogger("megabrain.admin")

ADMIN_ATTEMPTS = 10  # wrong keys per client IP per window
WINDOW = 15 * 60


async def require_key(gateway: "Gateway", request: Request, keys: list[str | None], what: str) -> None:
    """Let the request through if it presents one of ``keys`` (``Authorization: Bearer``); 404 when none is
    configured (the surface does not exist), 429 past the attempts allowed, 401 otherwise."""
    configured = [k for k in keys if k]
    if not configured:
        raise GatewayError("not_found", f"There is no route {request.url.path}.")
    ip = request_client_ip(request, gateway.settings.limits.trusted_proxy_hops)
    subject = _subject(ip)
    limiter = access_context(gateway).limiter
    counter = limiter.attempts(ADMIN_IP, subject, ADMIN_ATTEMPTS, WINDOW)
    refusal = (await limiter.check([counter])).error
    counted = refusal is None
    if refusal is not None and refusal.error_type == "temporarily_unavailable":
        refusal = None  # Redis is down: the key is still checked (so /metrics answers), nothing is counted
    if refusal is not None:
        log.warning("admin key refused: too many wrong keys ip=%s path=%s", subject, request.url.path)
        raise refusal
    presented = (bearer_token(request.headers.get("authorization")) or "").encode()
    if any(hmac.compare_digest(presented, key.encode()) for key in configured):
        if counted:
            await limiter.give_back([counter])
        return
    log.warning("admin key refused: wrong or missing key ip=%s path=%s", subject, request.url.path)
    raise GatewayError("authentication_required", f"This route needs {what}: send 'Authorization: Bearer …'.")


def _subject(ip: str | None) -> str:
    try:
        return rate_limit_subject(ip) if ip else "unknown"
    except ValueError:
        return "unknown"
