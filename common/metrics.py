"""Prometheus metrics: the hooks called on the request path (web tier) and in the pools (workers).

Each hook is a dictionary hit and an increment: label children are cached by their label values, so
the hot path never walks prometheus_client's label machinery.

Every label value comes from a bounded set, never straight from a client: routes, providers and pools are
the gateway's own names, model ids arrive as ``Catalog.label`` made them (a listed id, ``provider/*`` for a
provider's unlisted ids, else ``unknown``), statuses are HTTP codes (an upstream's outside 100–599 is 0).
So neither the series count nor the snapshot every process writes to Redis grows with what clients send.

How the numbers of every process reach one ``GET /metrics``: each process (web or worker) writes a
snapshot of its own samples into one Redis hash (``<ns>:metrics``, field = process id) every few
seconds; a scrape of any web process merges its live local samples with the other processes' snapshots
(summing counters and histogram buckets), and adds gauges computed at scrape time (queue depth, oldest
job age, live workers per pool). Worker dynos on Heroku take no inbound HTTP, so pushing through the
Redis they already use is the one way that works there. A process that stops pushing drops out after
``SNAPSHOT_TTL`` seconds (its counters then leave the sums: Prometheus sees a counter reset).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from common.queue import enqueued_ms

log = logging.getLogger("megabrain.metrics")

PROCESS_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
SNAPSHOT_INTERVAL = 5.0
SNAPSHOT_TTL = 30.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

REQUESTS = Counter("megabrain_requests", "Finished client requests.",
                   ("route", "model", "provider", "status"), registry=REGISTRY)
REQUEST_SECONDS = Histogram("megabrain_request_duration_seconds", "Client request latency, start to last byte.",
                            ("route", "provider"), buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TTFT_SECONDS = Histogram("megabrain_time_to_first_token_seconds",
                         "Time until the first byte of the answer left for the client.",
                         ("route", "provider"), buckets=_LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_SECONDS = Histogram("megabrain_upstream_duration_seconds", "One upstream call made by a worker.",
                             ("provider", "outcome"), buckets=_LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_ERRORS = Counter("megabrain_upstream_errors", "Failed upstream calls (status 0 = transport failure).",
                          ("provider", "model", "status"), registry=REGISTRY)
RETRIES = Counter("megabrain_upstream_retries", "Retries of the same provider.", ("provider",),
                  registry=REGISTRY)
FALLBACKS = Counter("megabrain_fallbacks", "Requests handed to the next candidate provider.",
                    ("from_provider", "to_provider"), registry=REGISTRY)
QUEUE_WAIT = Histogram("megabrain_queue_wait_seconds", "Enqueue to pickup by a worker, per pool.", ("pool",),
                       buckets=_LAG_BUCKETS + (5, 10, 30), registry=REGISTRY)
UNBILLED = Counter("megabrain_unbilled_attempts", "Attempts whose upstream work nobody is charged for (a "
                   "superseded or ended attempt's refused settlement; see common/settlement.py).",
                   ("provider", "reason"), registry=REGISTRY)
CREDIT_EVENTS = Counter("megabrain_credit_events", "Prepaid credits (common/ledger.py): Stripe top-ups and refunds "
                        "applied, and paid requests refused for want of credit.", ("event",), registry=REGISTRY)
RELAY_LAG = Histogram("megabrain_relay_lag_seconds", "Worker publish to web relay delivery.",
                      buckets=_LAG_BUCKETS, registry=REGISTRY)

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# --------------------------------------------------------------------------- hooks (hot path)


def request_done(route: str, model: str, provider: str | None, status: int, seconds: float,
                 ttft: float | None = None) -> None:
    """One finished client request (web tier)."""
    provider = provider or "none"
    _child(REQUESTS, route, model or "none", provider, str(status)).inc()
    _child(REQUEST_SECONDS, route, provider).observe(seconds)
    if ttft is not None:
        _child(TTFT_SECONDS, route, provider).observe(ttft)


def upstream_attempt(provider: str, model: str, status: int, seconds: float, ok: bool) -> None:
    """One upstream call made by a worker, successful or not (status 0 = transport failure)."""
    _child(UPSTREAM_SECONDS, provider, "ok" if ok else "error").observe(seconds)
    if not ok:
        _child(UPSTREAM_ERRORS, provider, model, str(status) if 100 <= status <= 599 else "0").inc()


def upstream_retry(provider: str) -> None:
    """A worker is about to retry the same provider."""
    _child(RETRIES, provider).inc()


def fallback(from_provider: str, to_provider: str) -> None:
    """A request moved to the next candidate provider."""
    _child(FALLBACKS, from_provider, to_provider).inc()


def unbilled(provider: str, reason: str) -> None:
    """A worker's settlement was refused (``superseded``, ``closed``, ``late``): the upstream worked for free."""
    _child(UNBILLED, provider, reason).inc()


def credit_event(event: str) -> None:
    """``topup`` or ``refund`` applied from Stripe's webhook, or ``insufficient_credits`` (a 402)."""
    _child(CREDIT_EVENTS, event).inc()


def queue_wait(pool: str, seconds: float) -> None:
    """How long a request's job waited in ``pool``'s queue before a worker started it."""
    _child(QUEUE_WAIT, pool).observe(max(0.0, seconds))


def relay_event(lag_seconds: float) -> None:
    """An event reached the relay ``lag_seconds`` after the worker published it."""
    RELAY_LAG.observe(max(0.0, lag_seconds))


# --------------------------------------------------------------------------- snapshots through Redis

# (family name, type, documentation) -> {(sample name, sorted label items): value}
Samples = dict[tuple[str, str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def local_samples() -> Samples:
    """This process's samples, keyed so that snapshots of several processes can be summed."""
    out: Samples = {}
    for family in REGISTRY.collect():
        bucket = out.setdefault((family.name, family.type, family.documentation), {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # a creation timestamp cannot be summed
            bucket[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def encode_snapshot(samples: Samples) -> bytes:
    families = [
        {"name": name, "type": kind, "doc": doc, "samples": [[s, dict(labels), v] for (s, labels), v in values.items()]}
        for (name, kind, doc), values in samples.items()
    ]
    return json.dumps({"ts": time.time(), "families": families}).encode()


def decode_snapshot(raw: bytes, now: float) -> Samples | None:
    """A snapshot read from Redis (JSON only, never pickle), or None when stale or malformed."""
    try:
        data = json.loads(raw)
        if now - float(data["ts"]) > SNAPSHOT_TTL:
            return None
        out: Samples = {}
        for family in data["families"]:
            bucket = out.setdefault((str(family["name"]), str(family["type"]), str(family["doc"])), {})
            for name, labels, value in family["samples"]:
                bucket[(str(name), tuple(sorted((str(k), str(v)) for k, v in labels.items())))] = float(value)
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def merge(parts: Iterable[Samples]) -> Samples:
    total: Samples = {}
    for part in parts:
        for family, values in part.items():
            bucket = total.setdefault(family, {})
            for key, value in values.items():
                bucket[key] = bucket.get(key, 0.0) + value
    return total


async def push_snapshot(redis: Any, key: str) -> None:
    """Write this process's samples into the shared hash (one HSET)."""
    await redis.hset(key, PROCESS_ID, encode_snapshot(local_samples()))


async def push_loop(redis: Any, key: str, interval: float = SNAPSHOT_INTERVAL) -> None:
    """Run for the life of the process: keep its snapshot fresh; remove it on exit."""
    try:
        while True:
            try:
                await push_snapshot(redis, key)
            except Exception as exc:  # Redis down: the next round retries
                log.debug("metrics snapshot failed (%s)", type(exc).__name__)
            await asyncio.sleep(interval)
    finally:
        try:
            await asyncio.shield(redis.hdel(key, PROCESS_ID))
        except BaseException:
            pass


async def remote_samples(redis: Any, key: str) -> list[Samples]:
    """Other processes' fresh snapshots; stale ones (dead processes) are deleted."""
    now = time.time()
    raw = await redis.hgetall(key)
    fresh: list[Samples] = []
    stale: list[bytes] = []
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        if name == PROCESS_ID:
            continue
        samples = decode_snapshot(value, now)
        if samples is None:
            stale.append(field)
        else:
            fresh.append(samples)
    if stale:
        await redis.hdel(key, *stale)
    return fresh


# --------------------------------------------------------------------------- pool gauges (scrape time)


async def pool_stats(redises: Any, names: Any, pools: Iterable[str], live_since: float) -> dict[str, dict[str, float]]:
    """Queue depth, oldest queued job age (s) and live workers of each pool: one round trip per Redis that
    serves pools (``common.redis.Redises``)."""
    groups = [(redis, members) for redis, members in redises.by_redis(list(pools)) if members]
    stats: dict[str, dict[str, float]] = {}
    for part in await asyncio.gather(*(_pool_stats_at(redis, names, members, live_since)
                                       for redis, members in groups)):
        stats.update(part)
    return stats


async def _pool_stats_at(redis: Any, names: Any, pools: list[str], live_since: float) -> dict[str, dict[str, float]]:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for pool in pools:
            pipe.zcard(names.queue(pool))
            pipe.zrange(names.queue(pool), 0, 0, withscores=True)
            pipe.zcount(names.live_workers(pool), live_since, "+inf")
        results = await pipe.execute()
    stats: dict[str, dict[str, float]] = {}
    for i, pool in enumerate(pools):
        depth, oldest, live = results[3 * i: 3 * i + 3]
        # arq scores a queued job by when it may run, in epoch milliseconds (keyed jobs: earlier, by a class offset)
        age = max(0.0, now - enqueued_ms(oldest[0][1], now * 1000) / 1000) if oldest else 0.0
        stats[pool] = {"queued": int(depth), "oldest_age_s": round(age, 3), "live_workers": int(live)}
    return stats


def _gauge(name: str, doc: str, values: dict[str, float]) -> tuple[tuple[str, str, str], dict[Any, float]]:
    return (name, "gauge", doc), {(name, (("pool", pool),)): value for pool, value in values.items()}


def pool_samples(stats: dict[str, dict[str, float]]) -> Samples:
    out: Samples = {}
    for name, field, doc in (
        ("megabrain_queue_depth", "queued", "Jobs waiting in a pool's queue (running jobs included until done)."),
        ("megabrain_queue_oldest_job_age_seconds", "oldest_age_s", "Age of the oldest job in a pool's queue."),
        ("megabrain_live_workers", "live_workers", "Worker processes serving a pool."),
    ):
        key, values = _gauge(name, doc, {pool: s[field] for pool, s in stats.items()})
        out[key] = values
    return out


# --------------------------------------------------------------------------- exposition


class _Frozen:
    """A collector that replays merged samples, so ``generate_latest`` writes the text format."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples

    def collect(self) -> Iterable[Metric]:
        for (name, kind, doc), values in sorted(self.samples.items()):
            metric = Metric(name, doc, kind)
            for (sample_name, labels), value in values.items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric


def exposition(parts: Iterable[Samples]) -> bytes:
    """The Prometheus text format of the merged samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Frozen(merge(parts)))  # type: ignore[arg-type]
    return generate_latest(registry)
