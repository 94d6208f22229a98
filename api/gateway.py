"""The web process's shared state: settings, Redis, the relay, the catalog, and who is alive.

Created once in the app's lifespan. Nothing here calls an upstream provider.
"""

from __future__ import annotations

import asyncio
import logging
import time

from api.access.accounts import AccountStore, HashingSlots
from api.provider_health import load_snapshot
from api.exchange.body import BodyBudget
from api.exchange.relay import Relay
from api.exchange.background import EventLog
from api.exchange.stored import ResponseStore
from common import metrics
from common.candidates import LIVENESS_TTL, has_live_worker
from common.names import Names
from common.redis import Redises
from common.server_secret import check_web_secrets
from common.settings import Settings
from router.catalog import Catalog, build_catalog
from router.health import HealthSnapshot
from router.providers import Provider, resolve_providers

log = logging.getLogger("megabrain.gateway")

WATCH_FOR = 5.0  # a worker no request asked about for this long is no longer checked


class LiveWorkers:
    """Which pools have a live worker, and which workers serving our requests died, refreshed in the
    background once a second.

    A pool the cache thinks is empty is checked once more directly before a request is refused, so a
    worker that just started is never missed. Workers that running requests depend on (``gone``) are
    checked in the same round trip, by their liveness keys (``Names.alive``): one MGET for all of this
    process's requests, and none while no request is running.
    """

    def __init__(self, redises: Redises, names: Names, pools: list[str]) -> None:
        self.redises = redises
        self.names = names
        self.pools = pools
        self.counts: dict[str, int] = {}
        self.watched: dict[str, float] = {}  # worker id -> when a request last asked about it
        self.dead: frozenset[str] = frozenset()  # watched workers whose liveness key has expired
        self.task: asyncio.Task[None] | None = None
        self.stopped = False

    def gone(self, worker: str) -> bool:
        """True when ``worker`` is known dead. Asking keeps it watched for the next refreshes."""
        self.watched[worker] = time.monotonic()
        return worker in self.dead

    async def refresh(self) -> None:
        since = time.time() - LIVENESS_TTL
        now = time.monotonic()
        self.watched = {w: at for w, at in self.watched.items() if now - at < WATCH_FOR}
        workers = list(self.watched)
        counts: dict[str, int] = {}
        for redis, pools in self.redises.by_redis(self.pools):  # each pool's liveness is on its own Redis
            async with redis.pipeline(transaction=False) as pipe:
                for pool in pools:
                    pipe.zcount(self.names.live_workers(pool), since, "+inf")
                counts.update(zip(pools, await pipe.execute()))
        self.counts = counts
        # a worker process's own liveness key is on the main Redis, whichever Redis its pools use
        alive = await self.redises.main.mget([self.names.alive(w) for w in workers]) if workers else []
        self.dead = frozenset(w for w, value in zip(workers, alive) if value is None)

    async def has_worker(self, pool: str) -> bool:
        if self.counts.get(pool):
            return True
        live = await has_live_worker(self.redises.pool(pool), self.names, pool)
        self.counts[pool] = int(live)
        return live

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="live-workers")

    async def _loop(self) -> None:
        while not self.stopped:
            try:
                await self.refresh()
            except Exception as exc:
                self.counts = {}
                self.dead = frozenset()  # unknown is not dead: the slow heartbeat timeout still holds
                log.debug("liveness refresh failed (%s)", type(exc).__name__)
            await asyncio.sleep(1.0)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = check_web_secrets(settings)  # ConfigError: refuses to start (common/server_secret.py)
        self.hashing = HashingSlots()  # Argon2 work of this process's log-ins and sign-ups, bounded
        self.names = Names(settings.namespace)
        self.providers: dict[str, Provider] = resolve_providers(settings)
        self.catalog: Catalog = build_catalog(settings, self.providers)
        configured = [p.id for p in self.providers.values() if p.configured]
        self.redises = Redises(settings, max_connections=64)
        self.redis = self.redises.main  # keys, limits, usage, health; a pool's queue is redises.pool(pool)
        # one subscription per Redis this process enqueues to: workers reply on their pool's Redis
        subscriptions = Redises(settings, pubsub=True, max_connections=2).by_redis(configured)
        self.responses = ResponseStore(self.redis, self.names, settings.response_ttl,
                                       settings.response_max_bytes)  # store: true
        self.response_events = EventLog(self.redis, self.names, settings.response_events_ttl,
                                        settings.response_events_max_bytes, settings.request_timeout + 60)
        self.background: set[asyncio.Task[None]] = set()  # answers followed with no connection (background)
        # where this process's reply channel is subscribed (a cancel for its answers, or a look at whether
        # another process still follows one, goes there)
        self.reply_redises = [redis for redis, _ in self.redises.by_redis(configured)]
        self.relay = Relay([redis for redis, _ in subscriptions], self.names.reply_channel(settings.instance_id),
                           settings.stream_buffer_bytes)
        self.live = LiveWorkers(self.redises, self.names, configured)
        self.bodies = BodyBudget(settings.limits.bodies_in_flight_bytes)  # api/exchange/body.py
        self.health = HealthSnapshot()
        self.draining = False
        self._health_task: asyncio.Task[None] | None = None
        self._health_pinned = False
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await AccountStore(self.redis, self.names, self.secret, self.hashing).migrate()
        except Exception as exc:  # Redis not there yet: the next start migrates
            log.warning("account migration skipped (%s)", type(exc).__name__)
        await self.relay.start()
        self.live.start()
        self._health_task = asyncio.create_task(self._refresh_health(), name="provider-health")
        # this process's metrics, for whichever web process Prometheus scrapes (common/metrics.py)
        self._metrics_task = asyncio.create_task(metrics.push_loop(self.redis, self.names.key("metrics")),
                                                 name="metrics-push")

    async def _refresh_health(self) -> None:
        """Provider health for the router, reloaded every couple of seconds (never on the request path)."""
        pools = list(self.live.pools)
        while not self._health_pinned:
            try:
                snapshot = await load_snapshot(self.redis, self.names, pools)
                if not self._health_pinned:
                    self.health = snapshot
            except Exception as exc:
                log.debug("health refresh failed (%s)", type(exc).__name__)
            await asyncio.sleep(2.0)

    async def pin_health(self, snapshot: HealthSnapshot) -> None:
        """Stop reloading health and use ``snapshot`` from now on (for tests and drills)."""
        self._health_pinned = True
        if self._health_task:
            self._health_task.cancel()
        self.health = snapshot

    async def stop(self) -> None:
        self._health_pinned = self.live.stopped = True  # flags too: a cancel may be swallowed (3.11)
        tasks = [t for t in (self._health_task, self._metrics_task, self.live.task) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)  # bounded: shutdown must never hang on a Redis call
        answers = list(self.background)  # each ends as failed, its work stopped (api/exchange/background.py)
        for task in answers:
            task.cancel()
        if answers:
            await asyncio.wait(answers, timeout=2.0)
        await self.relay.stop()
        await self.redises.aclose()
