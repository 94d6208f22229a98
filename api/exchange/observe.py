"""What the web tier records when a request ends: one structured log line and the request metrics.

Never a key or message content: ids, model, provider, status, timings and token counts only. Every metric
label comes from a bounded set (``Catalog.label``: a model id the client made up is ``unknown``), so
refused requests cannot mint new series; the log line keeps the id as sent (at most ``LOGGED_ID`` characters).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from common import metrics, tracing

if TYPE_CHECKING:
    from api.exchange.exchange import Exchange

log = logging.getLogger("megabrain.request")

LOGGED_ID = 256


def finished(exchange: "Exchange", status: int, usage: dict[str, Any] | None = None) -> None:
    """Called exactly once per request, by ``Exchange.finish``: answers and refusals alike."""
    now = time.monotonic()
    seconds = now - exchange.started
    ttft = exchange.first_byte_at - exchange.started if exchange.first_byte_at else None
    job = exchange.job
    route = job.plan[job.hop] if job is not None and job.plan else None
    model = route.model if route else exchange.model
    label = exchange.gateway.catalog.label(model) if model else "none"
    metrics.request_done(exchange.route_name, label, exchange.provider, status, seconds, ttft)
    if exchange.queue_ms is not None and route is not None:
        metrics.queue_wait(route.provider, exchange.queue_ms / 1000)
    fields: dict[str, Any] = {
        "request_id": exchange.request_id,
        "client_request_id": exchange.client_request_id,
        "route": exchange.route_name,
        "model": model[:LOGGED_ID],
        "provider": exchange.provider,
        "status": status,
        "stream": job.stream if job is not None else None,
        "duration_ms": round(seconds * 1000, 2),
        "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
        "queue_ms": exchange.queue_ms,
        "attempts": job.attempt + 1 if job is not None else 0,
        "hop": job.hop if job is not None else None,
    }
    if usage:
        fields["prompt_tokens"] = usage.get("prompt_tokens")
        fields["completion_tokens"] = usage.get("completion_tokens")
        fields["cost"] = usage.get("cost")
    log.info("request finished", extra={"fields": fields})
    if exchange.span is not None:
        tracing.end_request(exchange.span, status=status, provider=exchange.provider, model=model,
                            queue_ms=exchange.queue_ms, ttft=ttft, seconds=seconds, attempts=fields["attempts"],
                            hop=fields["hop"], stream=fields["stream"], usage=usage)
