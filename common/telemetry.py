"""Logging set-up (one JSON object per line) and Sentry; nothing that could carry a key or a prompt.

arq logs each job's arguments at INFO level; our job argument is the request body, so arq's loggers are
kept at WARNING.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgspec

_configured = False


# one encoder for every log line (a line per request at info); anything it cannot encode is logged as str()
_encode_log = msgspec.json.Encoder(enc_hook=str).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = record.exc_info[0].__name__
        return _encode_log(entry).decode()


def setup_logging(level: str = "info") -> None:
    global _configured
    if _configured:
        return
    # the logging HOWTO's optimisations: no caller lookup (a stack walk per line) and no thread or process
    # names on records, none of which a line shows
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger("megabrain").setLevel(level.upper())
    for noisy in ("arq", "arq.worker", "arq.jobs", "arq.connections", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def settle_heap() -> None:
    """Called once a process has built what it keeps for its lifetime (catalog, models.dev metadata,
    settings): those objects leave the cyclic garbage collector's view (``gc.freeze``), so its full
    collections (~20 ms with them) no longer rescan them while requests wait."""
    import gc

    gc.collect()
    gc.freeze()


# --------------------------------------------------------------------------- Sentry
#
# Off unless SENTRY_DSN is set. What may leave the process is decided in one place, ``scrub``: no request
# data at all (headers, bodies, query strings), no local variables, and every string of the event passes
# through a filter that masks keys (sk-..., mb-..., bearer tokens, Google keys, and the exact values of
# every *_API_KEY / admin key in the environment). Only logging and the ASGI integrations are enabled:
# auto-enabled ones (redis, httpx) would record commands and URLs that can carry payloads or keys.

_SECRET_PATTERNS = [
    re.compile(r"(?i)bearer\s+[^\s\"',;]+"),
    re.compile(r"\b(?:sk|mb|rk|pk)-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)([?&](?:key|api_key|api-key|token|access_token)=)[^&\s\"']+"),
]
_SENSITIVE_KEYS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
                   "set-cookie", "api_key", "apikey", "password", "secret", "token", "csrf_token", "email",
                   "messages", "prompt", "input", "body", "data", "content", "completion", "choices"}
_FILTERED = "[Filtered]"

_sentry_dsn: str | None = None
_secret_values: list[str] = []


def _collect_secret_values(env: Mapping[str, str]) -> list[str]:
    values = [v for k, v in env.items() if v and len(v) >= 6
              and (k.endswith("_API_KEY") or k in ("MEGABRAIN_ADMIN_KEY", "SENTRY_DSN") or k.endswith("_SECRET"))]
    return sorted(set(values), key=len, reverse=True)


def scrub_text(text: str) -> str:
    for value in _secret_values:
        if value in text:
            text = text.replace(value, _FILTERED)
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + _FILTERED, text)
        else:
            text = pattern.sub(_FILTERED, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 12:
        return _FILTERED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: (_FILTERED if isinstance(k, str) and k.lower() in _SENSITIVE_KEYS else _scrub(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    return value


def scrub(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry ``before_send``: drop request data and local variables, mask every key-looking string."""
    request = event.pop("request", None)
    if isinstance(request, dict) and isinstance(request.get("url"), str):
        event["request"] = {"url": request["url"].split("?", 1)[0], "method": request.get("method")}
    event.pop("extra", None)
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    for crumb in (event.get("breadcrumbs") or {}).get("values") or []:
        crumb.pop("data", None)
    return _scrub(event)


def init_sentry(settings: Any, role: str) -> bool:
    """Start Sentry for this process (``role`` = web | worker | serve); False when SENTRY_DSN is unset.

    Call once per process where it starts (after settings are loaded). Calling again with the same DSN
    does nothing.
    """
    global _sentry_dsn, _secret_values
    dsn = getattr(settings, "sentry_dsn", None)
    if not dsn:
        return False
    _secret_values = _collect_secret_values(getattr(settings, "env", {}) or {})
    if dsn == _sentry_dsn:
        return True
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    integrations: list[Any] = [LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)]
    try:
        from sentry_sdk.integrations.starlette import StarletteIntegration

        integrations += [StarletteIntegration()]
    except Exception:  # the web framework is not installed in this process's environment
        pass
    sentry_sdk.init(
        dsn=dsn,
        traces_sample_rate=float(getattr(settings, "sentry_traces_sample_rate", 0.0) or 0.0),
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=integrations,
        before_send=scrub,
        before_send_transaction=scrub,
        server_name=role,
        environment=getattr(settings, "env", {}).get("SENTRY_ENVIRONMENT") or None,
        release=getattr(settings, "env", {}).get("HEROKU_SLUG_COMMIT") or None,
    )
    sentry_sdk.set_tag("role", role)
    _sentry_dsn = dsn
    return True


def report_upstream_failure(provider: str, model: str, pool: str, request_id: str, status: int,
                            message: str) -> None:
    """An upstream failed for good (after retries, nothing left to hand over to): one Sentry event.

    Grouped by provider and status, so an outage is one issue with a count, not thousands. Upstream
    refusals that are the client's doing (400, 404, 413, 422 ...) are not the operator's problem and
    are skipped; 401/403 (our key rejected), 429 and 5xx/transport failures (status 0) are reported.
    """
    if _sentry_dsn is None or (400 <= status < 500 and status not in (401, 403, 429)):
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        scope.set_tag("provider", provider)
        scope.set_tag("model", model)
        scope.set_tag("pool", pool)
        scope.set_tag("request_id", request_id)
        scope.set_tag("upstream_status", str(status))
        scope.fingerprint = ["upstream-failure", provider, str(status)]
        scope.capture_message(f"upstream {provider} failed ({status or 'transport'}): {scrub_text(message)}",
                              level="error")


def flush_sentry(timeout: float = 2.0) -> None:
    """Send what is queued (call before a process exits)."""
    if _sentry_dsn is None:
        return
    import sentry_sdk

    sentry_sdk.flush(timeout)


def shutdown_sentry(timeout: float = 2.0) -> None:
    """Flush and stop Sentry (process exit, or a test that started it)."""
    global _sentry_dsn
    if _sentry_dsn is None:
        return
    import sentry_sdk

    sentry_sdk.get_client().close(timeout)
    sentry_sdk.init()  # back to the no-op client
    _sentry_dsn = None
