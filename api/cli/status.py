"""``megabrain status``: pools, their live workers and queue depths.

It reads the store directly (the same numbers ``/ready`` and ``/metrics`` show): the Redis at
``REDIS_URL``, else the running ``megabrain serve``'s embedded store, found through the data dir
(``MEGABRAIN_DATA_DIR``). ``--url`` asks a running server's ``/ready`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
import msgspec

from common.settings import Settings
from common.store import StoreError, reach


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the ``megabrain`` parser."""
    status = sub.add_parser("status", help="pools, live workers and queue depths")
    status.add_argument("--url", help="ask a running server's /ready instead of the store")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=cmd_status)


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    try:
        if args.url:
            report = from_server(args.url)
        else:
            with reach(settings.redis_url, settings.data_dir, start=False) as url:
                report = asyncio.run(from_redis(settings, url))
    except (StatusError, StoreError) as exc:
        sys.exit(f"megabrain: {exc}")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    if not report.get("redis", True):
        sys.exit(1)


class StatusError(Exception):
    """A failure worth one clear line to the operator."""


def from_server(url: str) -> dict[str, Any]:
    """The running server's ``/ready`` (503 there still carries the report)."""
    try:
        response = httpx.get(url.rstrip("/") + "/ready", timeout=5)
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise StatusError(
            f"no gateway answers at {url} ({type(exc).__name__}); is `megabrain serve` running there?"
        ) from None


async def from_redis(settings: Settings, url: str) -> dict[str, Any]:
    from api.gateway import LIVENESS_TTL
    from common.metrics import pool_stats
    from common.names import Names
    from common.redis import Redises, ping
    from router.providers import resolve_providers

    names = Names(settings.namespace)
    pools = [p.id for p in resolve_providers(settings).values() if p.configured]
    redises = Redises(msgspec.structs.replace(settings, redis_url=url), max_connections=2)
    redis = redises.main
    try:
        if not await ping(redis, timeout=3):
            return {"status": "unavailable", "redis": False, "pools": {}}
        # pools with live workers that this machine's environment does not configure still count
        async for key in redis.scan_iter(match=names.live_workers("*"), count=500):
            pool = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[-1]
            if pool not in pools:
                pools.append(pool)
        stats = await pool_stats(redises, names, sorted(pools), time.time() - LIVENESS_TTL)
    finally:
        await redises.aclose()
    return {"status": "ready", "redis": True, "pools": stats}


def render(report: dict[str, Any]) -> str:
    lines = [f"redis: {'ok' if report.get('redis') else 'UNREACHABLE'}"
             + ("" if report.get("relay", True) else "   relay: not subscribed")]
    pools: dict[str, dict[str, Any]] = report.get("pools") or {}
    if not pools:
        lines.append("no pools configured" if report.get("redis") else "")
        return "\n".join(line for line in lines if line)
    width = max(4, *(len(p) for p in pools))
    lines.append(f"{'pool':<{width}}  {'workers':>7}  {'queued':>6}  {'oldest':>8}")
    for pool, s in sorted(pools.items()):
        oldest = f"{s.get('oldest_age_s', 0):.1f}s" if s.get("queued") else "-"
        flag = "" if s.get("live_workers") else "   (no live worker: requests get 503)"
        lines.append(f"{pool:<{width}}  {s.get('live_workers', 0):>7}  {s.get('queued', 0):>6}  {oldest:>8}{flag}")
    return "\n".join(lines)
