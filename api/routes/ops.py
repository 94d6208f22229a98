"""Operational endpoints: liveness (``/health``), readiness (``/ready``) and metrics (``/metrics``).

``/health`` checks nothing (the process answers) but ``serve``'s own store (down too long: 503). ``/ready``
checks what a request needs: Redis answers within a second and the relay holds its subscription; it also
says which pools have live workers and how deep their queues are (``megabrain status`` reads it).
``/metrics`` is the Prometheus text format of every process of the deployment (see ``common/metrics.py``)
plus per-pool gauges computed at scrape time; it wants ``Authorization: Bearer`` with
``MEGABRAIN_METRICS_KEY`` (or the admin key), and does not exist without either: it names the models and
providers in use and the traffic they see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.access.admin_auth import require_key
from common import metrics
from common.redis import ping

if TYPE_CHECKING:
    from api.gateway import Gateway

log = logging.getLogger("megabrain.ops")

REDIS_TIMEOUT = 1.0  # /ready and /metrics never wait longer than this on Redis


async def health(request: Request) -> Response:
    """The process is alive (no dependency is checked: that is ``/ready``), unless it is ``serve`` and its
    embedded store has been down longer than ``store_down_limit``: then 503, so a platform restarts it."""
    watch = getattr(request.app.state, "store_watch", None)
    down = watch.down_for() if watch is not None else 0.0
    if down > request.app.state.gateway.settings.store_down_limit:
        return JSONResponse({"status": "unhealthy", "store": f"down for {down:.0f} s"}, status_code=503)
    return JSONResponse({"status": "ok"})


def _live_since() -> float:
    from api.gateway import LIVENESS_TTL

    return time.time() - LIVENESS_TTL


async def _pool_stats(gateway: "Gateway") -> dict[str, dict[str, float]]:
    return await asyncio.wait_for(
        metrics.pool_stats(gateway.redises, gateway.names, gateway.live.pools, _live_since()), REDIS_TIMEOUT
    )


async def ready(request: Request) -> Response:
    """200 when this process can serve requests; 503 (with the reason) when Redis or the relay is down."""
    gateway: Gateway = request.app.state.gateway
    redis_ok = await ping(gateway.redis, timeout=REDIS_TIMEOUT)
    relay_ok = gateway.relay.ready.is_set()
    body: dict[str, Any] = {"status": "ready" if redis_ok and relay_ok else "unavailable",
                            "redis": redis_ok, "relay": relay_ok, "pools": {}}
    if redis_ok:
        try:
            body["pools"] = await _pool_stats(gateway)
        except Exception as exc:
            log.debug("pool stats failed (%s)", type(exc).__name__)
    body["pools_with_workers"] = sorted(p for p, s in body["pools"].items() if s.get("live_workers"))
    return JSONResponse(body, status_code=200 if redis_ok and relay_ok else 503)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format. Without Redis it still answers, with this process's own samples only."""
    gateway: Gateway = request.app.state.gateway
    await require_key(gateway, request, [gateway.settings.metrics_key, gateway.settings.admin_key],
                      "the metrics key ($MEGABRAIN_METRICS_KEY) or the admin key")
    parts: list[metrics.Samples] = [metrics.local_samples()]
    try:
        parts += await asyncio.wait_for(metrics.remote_samples(gateway.redis, metrics_key(gateway)), REDIS_TIMEOUT)
        parts.append(metrics.pool_samples(await _pool_stats(gateway)))
    except Exception as exc:
        log.debug("metrics: Redis part skipped (%s)", type(exc).__name__)
    return Response(metrics.exposition(parts), media_type=metrics.CONTENT_TYPE)


def metrics_key(gateway: "Gateway") -> str:
    """The Redis hash where every process of this deployment leaves its metrics snapshot."""
    return gateway.names.key("metrics")


ROUTES = [
    ("GET", "/health", health),
    ("GET", "/ready", ready),
    ("GET", "/metrics", metrics_endpoint),
]
