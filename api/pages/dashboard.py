"""The operator's dashboard (``/operator``): pools and their workers, providers' health, today's requests
and spend per model and per key, refusals by kind — one server-rendered page, read from what exists.

Nothing here is recorded for the dashboard: each figure is read, when the page is asked for, from where the
gateway already keeps it, so it cannot disagree with what routing, ``/ready``, ``/metrics`` and billing see:

- pools: each pool's queue (depth, oldest job) and its workers' liveness entries (``live:<pool>``, scored
  by their last heartbeat: a worker unseen for ``LIVENESS_TTL`` is shown gone until its entry is dropped);
- providers: the health snapshot the router uses (circuits, calls, error rate and mean latency over the
  last minute, ``router/health.py``), and p50/p95 from the same window's latency bands;
- pickup latency and refusals: the processes' metrics (``<ns>:metrics`` snapshots, as ``/metrics`` sums
  them), since those processes started;
- today's requests and spend: the usage counters the settlement writes per key, day and model.

Who may look: ``Authorization: Bearer <admin key>`` (checked and limited as on ``/admin/*``), or a signed-in
account whose email is one of ``MEGABRAIN_OPERATOR_EMAILS``. Anybody else gets a 404: the page is not there.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.access.accounts import email_key
from api.access.admin_auth import require_key
from api.access.check import bearer_token
from api.access.keys import KeyStore
from api.pages.forms import Visitor, visitor
from common import metrics
from common.candidates import LIVENESS_TTL
from common.errors import GatewayError
from common.usage import ANONYMOUS, usage_key, utc_day
from router.health import BUCKET_SECONDS, WINDOW_BUCKETS, bucket_scope, hash_numbers, latency_bands, window

TOP_KEYS = 20
CHART_WIDTH = 600
REFUSALS = {  # status → what refused it (README, Errors)
    "400": "bad request", "401": "authentication", "402": "credits", "403": "forbidden", "404": "unknown model",
    "413": "too large", "429": "limits", "499": "client left", "502": "upstream error",
    "503": "unavailable (no worker, queue full, circuit open)", "504": "timeout",
}


@dataclass
class Worker:
    id: str
    seen_s: float  # seconds since its last heartbeat

    @property
    def gone(self) -> bool:
        return self.seen_s > LIVENESS_TTL


@dataclass
class Pool:
    name: str
    queued: int
    oldest_age_s: float
    workers: list[Worker]
    pickup_p50_ms: float | None
    pickup_p95_ms: float | None

    @property
    def live(self) -> int:
        return sum(1 for w in self.workers if not w.gone)


@dataclass
class Provider:
    name: str
    circuit: str  # closed | half_open | open
    open_models: list[str]
    calls: int
    error_rate: float | None
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)  # upstream status → failed calls (since start)


@dataclass
class Spend:
    name: str  # model id, or key name
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    width: float = 0.0  # of its bar in the chart

    def add(self, kind: str, value: bytes | str) -> None:
        text = value.decode() if isinstance(value, bytes) else value
        try:
            if kind == "cost":
                self.cost += Decimal(text)
            elif kind in ("requests", "prompt_tokens", "completion_tokens"):
                setattr(self, kind, getattr(self, kind) + int(text))
        except (InvalidOperation, ValueError):
            pass


async def is_operator(who: Visitor) -> bool:
    """A signed-in account registered under one of ``MEGABRAIN_OPERATOR_EMAILS`` (by the email's HMAC,
    the only form the store keeps it in)."""
    emails = [e.strip() for e in who.gateway.settings.operator_emails.split(",") if e.strip()]
    if who.account is None or not emails:
        return False
    names = who.gateway.names
    owners = await who.gateway.redis.mget([names.account_email(email_key(who.gateway.secret, e)) for e in emails])
    return any(owner is not None and (owner.decode() if isinstance(owner, bytes) else owner) == who.account.id
               for owner in owners)


async def dashboard(request: Request) -> Response:
    who = await visitor(request)
    settings = who.gateway.settings
    if bearer_token(request.headers.get("authorization")):
        await require_key(who.gateway, request, [settings.admin_key], "the admin key")
    elif not await is_operator(who):
        if who.account is None and settings.operator_emails:
            return who.redirect("/login")
        raise GatewayError("not_found", f"There is no route {request.url.path}.")
    now = time.time()
    pools, providers, (models, keys), refusals = await asyncio.gather(
        read_pools(who, now), read_providers(who, now), read_today(who, now), read_refusals(who))
    _bars(models)
    return who.render("dashboard.html", pools=pools, providers=providers, models=models, keys=keys,
                      refusals=refusals, chart_width=CHART_WIDTH, window_s=WINDOW_BUCKETS * BUCKET_SECONDS,
                      day=utc_day(now), liveness_ttl=LIVENESS_TTL,
                      total_cost=sum((m.cost for m in models), Decimal(0)),
                      total_requests=sum(m.requests for m in models))


# --------------------------------------------------------------------------- what it reads


def _pool_names(who: Visitor) -> list[str]:
    return sorted(p.id for p in who.gateway.providers.values() if p.configured)


async def _samples(who: Visitor) -> metrics.Samples:
    """Every live process's metrics, summed as ``/metrics`` sums them."""
    remote = await metrics.remote_samples(who.gateway.redis, who.gateway.names.key("metrics"))
    return metrics.merge([metrics.local_samples(), *remote])


async def read_pools(who: Visitor, now: float) -> list[Pool]:
    gateway = who.gateway
    names = _pool_names(who)
    stats, samples = await asyncio.gather(metrics.pool_stats(gateway.redises, gateway.names, names, 0.0),
                                          _samples(who))
    waits = _family(samples, "megabrain_queue_wait_seconds")
    pools = []
    for name in names:
        members = await gateway.redises.pool(name).zrange(gateway.names.live_workers(name), 0, -1, withscores=True)
        workers = sorted((Worker(_text(m), round(max(0.0, now - s), 1)) for m, s in members), key=lambda w: w.seen_s)
        buckets = _buckets(waits, "megabrain_queue_wait_seconds_bucket", pool=name)
        stat = stats.get(name, {})
        pools.append(Pool(name, int(stat.get("queued", 0)), float(stat.get("oldest_age_s", 0.0)), workers,
                          _ms(quantile(buckets, 0.5)), _ms(quantile(buckets, 0.95))))
    return pools


async def _latency_windows(who: Visitor, providers: list[str], now: float) -> dict[str, list[tuple[float, float]]]:
    """Each provider's answered calls per latency band over the health window (the workers' bucket hashes)."""
    gateway = who.gateway
    buckets = window(now)
    async with gateway.redis.pipeline(transaction=False) as pipe:
        for provider in providers:
            for bucket in buckets:
                pipe.hgetall(gateway.names.health(bucket_scope(provider, bucket)))
        replies = await pipe.execute()
    out: dict[str, list[tuple[float, float]]] = {}
    for i, provider in enumerate(providers):
        fields: dict[str, int] = {}
        for raw in replies[i * len(buckets):(i + 1) * len(buckets)]:
            for name, value in hash_numbers(raw, int).items():
                fields[name] = fields.get(name, 0) + value
        out[provider] = latency_bands(fields)
    return out


async def read_providers(who: Visitor, now: float) -> list[Provider]:
    health = who.gateway.health
    names = _pool_names(who)
    samples, latencies = await asyncio.gather(_samples(who), _latency_windows(who, names, now))
    errors = _family(samples, "megabrain_upstream_errors")
    rows = []
    for name in names:
        buckets = latencies[name]
        by_status: dict[str, int] = {}
        for (sample, labels), value in errors.items():
            tags = dict(labels)
            if sample.endswith("_total") and tags.get("provider") == name and value:
                by_status[tags.get("status", "?")] = by_status.get(tags.get("status", "?"), 0) + int(value)
        open_models = sorted(s.split("|", 1)[1] for s in health.open_circuits if s.startswith(name + "|"))
        rate = health.error_rates.get(name)
        mean = health.latencies.get(name)
        rows.append(Provider(name, health.state(name), open_models, health.calls.get(name, 0), rate,
                             _ms(mean), _ms(quantile(buckets, 0.5)), _ms(quantile(buckets, 0.95)),
                             dict(sorted(by_status.items()))))
    return rows


async def read_today(who: Visitor, now: float) -> tuple[list[Spend], list[Spend]]:
    """Today's requests, tokens and cost per model and per key (the top ``TOP_KEYS`` by spend)."""
    gateway = who.gateway
    records = await KeyStore(gateway.redis, gateway.names).list()
    label = {r.id: f"{r.name} ({r.prefix}…)" for r in records}
    ids = [r.id for r in records] + [ANONYMOUS]
    day = utc_day(now)
    async with gateway.redis.pipeline(transaction=False) as pipe:
        for key_id in ids:
            pipe.hgetall(usage_key(gateway.names, key_id, day))
        hashes = await pipe.execute()
    per_model: dict[str, Spend] = {}
    per_key: list[Spend] = []
    for key_id, fields in zip(ids, hashes):
        if not fields:
            continue
        total = Spend(label.get(key_id, "anonymous (no key)" if key_id == ANONYMOUS else key_id))
        for name, value in fields.items():
            model, _, kind = _text(name).rpartition("|")
            per_model.setdefault(model, Spend(model)).add(kind, value)
            total.add(kind, value)
        per_key.append(total)
    models = sorted(per_model.values(), key=lambda s: (s.cost, s.requests), reverse=True)
    keys = sorted(per_key, key=lambda s: (s.cost, s.requests), reverse=True)[:TOP_KEYS]
    return models, keys


async def read_refusals(who: Visitor) -> list[tuple[str, str, int]]:
    """Requests answered with an error, by status and what it means, since the processes started."""
    samples = await _samples(who)
    requests = _family(samples, "megabrain_requests")
    counts: dict[str, int] = {}
    for (sample, labels), value in requests.items():
        status = dict(labels).get("status", "")
        if sample.endswith("_total") and status[:1] in ("4", "5") and value:
            counts[status] = counts.get(status, 0) + int(value)
    return [(status, REFUSALS.get(status, "other"), n) for status, n in sorted(counts.items())]


# --------------------------------------------------------------------------- helpers


def _family(samples: metrics.Samples, name: str) -> dict[Any, float]:
    """One metric family's samples, by the family's name."""
    for (family, _, _), values in samples.items():
        if family == name:
            return values
    return {}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _buckets(samples: dict[Any, float], name: str, **match: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets ``(upper bound, count)`` over the series matching ``match``."""
    summed: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample != name:
            continue
        tags = dict(labels)
        if any(tags.get(k) != v for k, v in match.items()):
            continue
        bound = float(tags.get("le", "inf"))
        summed[bound] = summed.get(bound, 0.0) + value
    return sorted(summed.items())


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket that holds the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, count
    return lower


def _bars(rows: list[Spend]) -> None:
    peak = max((row.cost for row in rows), default=Decimal(0))
    for row in rows:
        row.width = round(float(row.cost / peak) * (CHART_WIDTH - 220), 1) if peak > 0 else 0.0
