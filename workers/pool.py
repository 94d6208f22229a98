"""Provider pools: one arq worker per provider queue, woken on enqueue, all in one process.

arq polls its queue; a pool woken only by polling adds up to ``poll_delay`` to every request. Here each
worker waits on an event that a single pub/sub subscription sets when a job is enqueued on its queue
(``common/queue.py`` publishes the nudge), so pickup is immediate and an idle worker costs one slow poll
per ``poll_delay`` (the safety net for a missed nudge). The same subscription carries this process's
control channel (cancel a request) so a worker process holds one pub/sub connection in all.

A pool whose queue is on the main Redis also takes jobs without the queue: while its worker has a free
slot, the process is registered in the pool's idle set (``Names.idle_workers``), and the web tier's
admission script pops one registration and publishes the job itself on that process's control channel
(``api/access/limits.py``). Wake-up, claim and payload read (two hops) are saved when a worker is idle; busy
pools, split pools, re-runs and hand-offs between pools use the queue as before. A registration is
consumed by exactly one hand-off, and made again only with a free slot, so a pool runs at most one job
over ``max_jobs`` (a registration made while free, used after queue claims filled the slots).

The process also keeps a liveness entry per pool in Redis (a sorted set scored by time), which the web
tier reads to refuse requests for pools with no live worker at once instead of letting them wait, and
one liveness key of its own, rewritten every ``ALIVE_EVERY`` seconds with a TTL of ``ALIVE_TTL``: when the
process dies (SIGKILL, OOM, a lost dyno) the key is gone within seconds, and the web processes waiting
on its requests notice at their next check (``api/gateway.py``), with no Redis work per token.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import arq.worker
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job_raw
from arq.worker import Worker

from common import metrics
from common.candidates import LIVENESS_TTL  # a pool member unseen this long is presumed dead
from common.mux import Script, mux_of
from common.names import Names
from common.queue import IDLE_FRESH
from common.redis import Redises, job_deserializer, job_serializer
from common.settings import Settings
from common.subscription import subscribe
from common.telemetry import flush_sentry, init_sentry, settle_heap
from common.tracing import init_tracing, shutdown_tracing
from router.catalog import build_catalog
from router.providers import resolve_providers
# imported to register their job handlers
from workers import (  # noqa: F401
    chat, completions, embeddings, images, moderations, native, rerank, speech, transcriptions,
)
from workers import health
from workers.jobs import JOB_FUNCTION, serve
from workers.runtime import Runtime
from workers.upstream import make_http_client

log = logging.getLogger("megabrain.worker")

LIVENESS_INTERVAL = 2.0  # seconds between liveness writes
ALIVE_EVERY = 1.0  # seconds between writes of the process's liveness key
ALIVE_TTL = 3.0  # that key's TTL: three missed writes and the process counts as dead
HEARTBEAT_AFTER = 5.0  # a job silent for this long sends a heartbeat event
TALLY_INTERVAL = 0.25  # seconds between batched writes of what may wait (health counts), never billing
START_AFTER = 0.2  # a job that has not answered this soon after pickup announces itself ("start")


# Claim up to ARGV[2] ready jobs in one round trip, atomically: take each off the queue and return it with
# its payload, which leaves Redis here (GETDEL): from now on the prompt lives only in this process (and the
# web tier, which re-runs from its own copy), so no copy is left behind whatever dies. A job off the queue
# can no longer be withdrawn, which is what common.queue.withdraw relies on; an empty payload means the job
# expired or was withdrawn. arq's in-progress marker is not written: nothing here reads it, and it cost a
# write per job plus its delete. Two commands a job, nothing left to clean up afterwards.
CLAIM_SCRIPT = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for i = 1, #ids do
  redis.call('zrem', KEYS[1], ids[i])
  claimed[#claimed + 1] = ids[i]
  claimed[#claimed + 1] = redis.call('getdel', ARGV[3] .. ids[i]) or ''
end
return claimed
"""


class PoolWorker(Worker):
    """An arq ``Worker`` with a hot path fit for interactive requests.

    arq polls its queue every ``poll_delay``, claims each job with four round trips, reads it with a fifth,
    and records a result and a retry counter with more; its re-run-after-crash is not wanted here either
    (the web tier decides re-runs, since only it knows whether a client already got tokens). This worker
    keeps arq's queue, job format, settings and lifecycle, but:

    - sleeps until the pool's wake-up nudge (with ``poll_delay`` as a slow safety net),
    - claims every ready job and takes its payload in one Lua script (one round trip, two commands a job),
    - runs the job function, with nothing left to clean up afterwards.
    """

    def __init__(self, *args: Any, wake: asyncio.Event, worker_id: str = "", idle_key: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake
        self.closing = False  # a flag as well as a cancel: Python 3.11's wait_for can swallow a cancel
        self._claim = Script(CLAIM_SCRIPT)
        self.worker_id = worker_id  # the process's id: its idle registration's member
        self.idle_key = idle_key  # the pool's idle set, or None: no direct hand-offs (a split pool)
        self.registered = False  # our registration is in the idle set, as far as we know
        self.backlog = True  # the queue may hold jobs: a job that ends wakes the claim loop (_poll_iteration)
        self._registering: set[asyncio.Task[None]] = set()

    def register_if_free(self) -> None:
        """Offer this pool's free slot for a direct hand-off, unless already offered. The ZADD goes out on
        the pool's multiplexed connection in the background (never awaited on a job's critical path)."""
        if (self.idle_key is None or self.registered or self.closing or not self.allow_pick_jobs
                or self.job_counter >= self.max_jobs):
            return
        self.registered = True
        task = asyncio.get_running_loop().create_task(self._register(self.idle_key))
        self._registering.add(task)
        task.add_done_callback(self._registering.discard)

    async def _register(self, idle_key: str) -> None:
        if self.closing or not self.allow_pick_jobs:  # stop() began meanwhile: its ZREM must stay last
            self.registered = False
            return
        try:
            await mux_of(self.pool).execute("ZADD", idle_key, time.time(), self.worker_id)
        except Exception as exc:  # Redis trouble: try again with the next freed slot or resubscription
            self.registered = False
            log.warning("%s: could not register as idle (%s)", self.queue_name, type(exc).__name__)

    def start_handed(self, job_id: str, raw: bytes) -> None:
        """Run a job the admission script handed us directly, like a claimed one but without waiting on
        the semaphore: it is here already (see the module docstring for the bound), also while the process
        is stopping (it is in flight; the grace period covers it). Its registration was consumed."""
        self.registered = False
        self.job_counter += 1
        task = self.loop.create_task(self._serve_claimed(job_id, raw))
        task.add_done_callback(lambda _: self._job_done(took_slot=False))
        self.tasks[job_id] = task
        self.register_if_free()  # after the job's task: the ZADD rides the mux's next write

    def _job_done(self, took_slot: bool) -> None:
        """A job ended: its count, and its semaphore slot unless it was handed to us, are free again. While
        the queue may hold jobs the claim loop runs at once (whatever it was doing: it re-reads the free
        slots after each claim), else the freed slot is offered for a hand-off."""
        self.job_counter -= 1
        if took_slot:
            self.sem.release()
        if self.backlog:
            self.wake.set()
        self.register_if_free()

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        while not self.closing:
            self.wake.clear()
            try:
                await self._poll_iteration()  # when full, a freed slot wakes us again (below)
            except Exception as exc:  # Redis outage: keep polling, or the pool silently stops for good
                log.warning("%s: poll failed (%s); retrying", self.queue_name, type(exc).__name__)
                await asyncio.sleep(min(1.0, self.poll_delay_s))
                continue
            try:
                async with asyncio.timeout(self.poll_delay_s):
                    await self.wake.wait()
            except TimeoutError:
                pass

    async def _poll_iteration(self) -> None:
        """Claim as many ready jobs as there are free slots. ``backlog`` says whether the queue may still
        hold jobs: it is presumed so while a claim is on its way (a job that ends meanwhile wakes the loop
        again) and after a claim that filled every slot it asked for (or asked for none, being full); only a
        claim that came back short proves the queue empty, and a later enqueue nudges us anyway."""
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
        if not self.allow_pick_jobs:
            return
        self.backlog = True
        free = self.max_jobs - self.job_counter
        if free <= 0:
            return  # full: the first job to end wakes us
        claimed = await mux_of(self.pool).evalsha(
            self._claim, [self.queue_name], [int(time.time() * 1000), free, job_key_prefix])
        self.backlog = len(claimed) // 2 >= free
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode()
            await self.sem.acquire()  # never waits: handed jobs take no permit, so free <= permits left
            self.job_counter += 1
            task = self.loop.create_task(self._serve_claimed(job_id, claimed[i + 1]))
            task.add_done_callback(lambda _: self._job_done(took_slot=True))
            self.tasks[job_id] = task
        if self.backlog and self.job_counter < self.max_jobs:
            self.wake.set()  # slots freed while the claim was on its way: claim again at once

    async def _serve_claimed(self, job_id: str, raw: bytes) -> None:
        """Run one claimed job: arq's ``run_job`` without results, retries or per-job logging."""
        try:
            if not raw:
                return  # expired or withdrawn between enqueue and claim
            function_name, args, _, _, _ = deserialize_job_raw(raw, deserializer=self.job_deserializer)
            function = self.functions.get(function_name)
            if function is None:
                log.warning("%s: job %s names an unknown function", self.queue_name, job_id)
                return
            async with asyncio.timeout(function.timeout_s or self.job_timeout_s):
                await function.coroutine(self.ctx, *args)
            self.jobs_complete += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our job function handles its own errors; this is a bug: no payload logged
            self.jobs_failed += 1
            log.error("%s: job %s crashed (%s)", self.queue_name, job_id, type(exc).__name__)

    def _release_sem_dec_counter_on_complete(self) -> None:  # arq's name, for a claimed job
        self._job_done(took_slot=True)


def resolve_pools(settings: Settings, requested: str) -> tuple[str, ...]:
    """``'*'`` means every configured provider; otherwise a comma-separated list of provider ids."""
    providers = resolve_providers(settings)
    if requested.strip() in ("*", "all", ""):
        return tuple(p.id for p in providers.values() if p.configured)
    pools = tuple(p.strip() for p in requested.split(",") if p.strip())
    unknown = [p for p in pools if p not in providers]
    if unknown:
        raise SystemExit(f"unknown provider(s): {', '.join(unknown)}")
    return pools


class PoolProcess:
    """Everything one ``megabrain worker`` process runs: workers, wake/control listener, liveness."""

    def __init__(self, settings: Settings, pools: tuple[str, ...]) -> None:
        self.settings = settings
        self.names = Names(settings.namespace)
        self.pools = pools
        providers = resolve_providers(settings)
        # the main Redis (usage, health, metrics) and each pool's (queue, wake-ups, liveness, events)
        self.redises = Redises(settings, max_connections=settings.worker_max_jobs * len(pools) + 10)
        self.redis = self.redises.main
        self.pubsub_redises = Redises(settings, pubsub=True, max_connections=2)
        self.runtime = Runtime(
            settings=settings, names=self.names, redis=self.redis,
            http=make_http_client(settings, max_connections=settings.worker_max_jobs * max(1, len(pools))),
            providers=providers, catalog=build_catalog(settings, providers), pools=pools, redises=self.redises,
        )
        self.wakes = {pool: asyncio.Event() for pool in pools}
        self.workers = [self._make_worker(pool) for pool in pools]
        self.worker_of = dict(zip(pools, self.workers))
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = False

    def _make_worker(self, pool: str) -> PoolWorker:
        return PoolWorker(
            functions=[arq.worker.func(serve, name=JOB_FUNCTION, max_tries=1,
                                       timeout=self.settings.request_timeout + 30)],
            queue_name=self.names.queue(pool),
            redis_pool=self.redises.pool(pool),
            wake=self.wakes[pool],
            worker_id=self.runtime.worker_id,
            # direct hand-offs only where the admission script runs: a pool on the main Redis
            idle_key=self.names.idle_workers(pool) if self.redises.pool(pool) is self.redis else None,
            handle_signals=False,
            max_jobs=self.settings.worker_max_jobs,
            poll_delay=self.settings.poll_delay,
            keep_result=0,
            max_tries=1,  # arq's own re-run after a crash must not call the upstream again
            retry_jobs=False,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            ctx={"runtime": self.runtime},
            health_check_interval=3600,
            log_results=False,
        )

    async def start(self) -> None:
        await self._write_alive()
        await self._write_liveness()
        self.runtime.circuits = await health.read_circuits(self.redis, self.names, self.pools)
        self._tasks = [
            *(asyncio.create_task(self._listen(redis, pools), name="pool-listen")
              for redis, pools in self.pubsub_redises.by_redis(self.pools)),
            asyncio.create_task(self._alive_loop(), name="pool-alive"),
            asyncio.create_task(self._liveness_loop(), name="pool-liveness"),
            asyncio.create_task(self._heartbeat_loop(), name="pool-heartbeats"),
            asyncio.create_task(self._tally_loop(), name="pool-tally"),
            # this process's metrics reach the web tier's /metrics through Redis (common/metrics.py)
            asyncio.create_task(metrics.push_loop(self.redis, self.names.key("metrics")), name="pool-metrics"),
        ]
        self._tasks += [asyncio.create_task(w.main(), name=f"pool-{p}") for w, p in zip(self.workers, self.pools)]
        log.info("worker %s serving pools: %s", self.runtime.worker_id, ", ".join(self.pools))

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then drain in-flight jobs (bounded) and exit."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await self.start()
        settle_heap()
        await stop.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop picking jobs, let running ones finish within the grace period, then cancel the rest."""
        if self.stopping:
            return
        self.stopping = True
        for worker in self.workers:
            worker.allow_pick_jobs = False
        # a liveness write under way would land after the ZREM below and put us back in the live set
        liveness = [task for task in self._tasks if task.get_name() == "pool-liveness"]
        for task in liveness:
            task.cancel()
        if liveness:
            await asyncio.wait(liveness, timeout=3.0)  # bounded, like every shutdown step
        # leave the liveness and idle sets first, so web processes stop sending us work; on the
        # multiplexed connection, so after any idle registration already on its way
        for redis, pools in self.redises.by_redis(self.pools):
            try:
                await mux_of(redis).pipeline(
                    [command for pool in pools for command in (
                        ("ZREM", self.names.live_workers(pool), self.runtime.worker_id),
                        ("ZREM", self.names.idle_workers(pool), self.runtime.worker_id))])
            except Exception:
                pass
        deadline = time.monotonic() + self.settings.shutdown_grace
        while any(w.tasks for w in self.workers) and time.monotonic() < deadline:
            for worker in self.workers:
                for job_id, task in list(worker.tasks.items()):
                    if task.done():
                        del worker.tasks[job_id]
            await asyncio.sleep(0.05)
        # out of time: tell the web tier these requests are abandoned (it re-runs those that sent nothing)
        await asyncio.gather(*(_quiet(pub.send("abandoned"))
                               for pub in list(self.runtime.publishers.values())))
        for worker in self.workers:
            worker.closing = True
        for task in self._tasks:
            task.cancel()
        for worker in self.workers:
            for task in worker.tasks.values():
                task.cancel()
        # bounded: on Python 3.11 a cancel that lands as a Redis call completes can be swallowed
        # (asyncio.wait_for), so the loops also watch their flags and we never wait forever
        pending = {*self._tasks, *(t for w in self.workers for t in w.tasks.values())}
        if pending:
            await asyncio.wait(pending, timeout=3.0)
        try:  # nothing of ours runs any more: waiting web processes may stop watching at once
            await self.redis.delete(self.names.alive(self.runtime.worker_id))
        except Exception:
            pass
        try:
            await self._flush_tallies()
        except Exception as exc:
            log.warning("could not write the last counters (%s)", type(exc).__name__)
        await self.runtime.http.close()
        await self.redises.aclose()
        await self.pubsub_redises.aclose()

    async def _flush_tallies(self) -> None:
        await self.runtime.tally.flush(self.redis)  # health counts, on the main Redis

    async def _listen(self, redis: Any, pools: list[str]) -> None:
        """One subscription per Redis of our pools: their wake channels, and our control channel."""
        wake_by_channel = {self.names.wake_channel(p).encode(): self.wakes[p] for p in pools}
        control = self.names.control_channel(self.runtime.worker_id).encode()

        def on_message(channel: bytes, data: bytes) -> None:
            wake = wake_by_channel.get(channel)
            if wake is not None:
                wake.set()
            elif channel == control:
                self._control(data)

        def subscribed() -> None:
            for event in wake_by_channel.values():
                event.set()  # poll once after (re)subscribing, in case nudges were missed
            for pool in pools:  # hand-offs reach us from now on; one published meanwhile used up our entry
                worker = self.worker_of[pool]
                worker.registered = False
                worker.register_if_free()

        while not self.stopping:
            try:
                await subscribe(redis, [*wake_by_channel, control], on_message, subscribed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(0.5)

    def _control(self, data: bytes) -> None:
        """``job <pool> <job id> <serialized job>`` (a direct hand-off: binary, and neither the pool nor the
        job id holds a space) or ``cancel <request id> <attempt>``."""
        if data.startswith(b"job "):
            _, pool, job_id, raw = data.split(b" ", 3)
            worker = self.worker_of.get(pool.decode())
            if worker is None:  # not a pool of ours: cannot happen unless ids collide; the web re-runs it
                log.error("handed a job for pool %r, which this process does not serve", pool)
                return
            worker.start_handed(job_id.decode(), raw)
            return
        command, _, rest = data.decode().partition(" ")
        request_id, _, attempt = rest.partition(" ")
        if command == "cancel" and attempt.isdigit():
            self.runtime.cancel(request_id, int(attempt))

    async def _write_alive(self) -> None:
        await self.redis.set(self.names.alive(self.runtime.worker_id), b"1", px=int(ALIVE_TTL * 1000))

    async def _alive_loop(self) -> None:
        """The process's own liveness key, also while draining: its jobs still run until stop() ends."""
        while not any(w.closing for w in self.workers):
            await asyncio.sleep(ALIVE_EVERY)
            try:
                await self._write_alive()
            except Exception as exc:
                log.warning("could not write the liveness key (%s)", type(exc).__name__)

    async def _write_liveness(self) -> None:
        now = time.time()
        for redis, pools in self.redises.by_redis(self.pools):  # each pool's liveness on its own Redis
            async with redis.pipeline(transaction=False) as pipe:
                for pool in pools:
                    key = self.names.live_workers(pool)
                    pipe.zadd(key, {self.runtime.worker_id: now})
                    pipe.zremrangebyscore(key, "-inf", now - LIVENESS_TTL * 10)
                    pipe.expire(key, int(LIVENESS_TTL * 20))
                    if self.worker_of[pool].idle_key is not None:
                        # keep our idle registration fresh (XX: never re-add one a hand-off consumed, or a
                        # second job could be on its way), and drop dead processes' stale ones
                        idle = self.names.idle_workers(pool)
                        pipe.zadd(idle, {self.runtime.worker_id: now}, xx=True)
                        pipe.zremrangebyscore(idle, "-inf", now - IDLE_FRESH * 2)
                await pipe.execute()

    async def _liveness_loop(self) -> None:
        """Liveness, and the circuits of our providers (for the health fast path), every couple of seconds.
        Never once ``stop()`` began: it leaves the live set, and a write after that would put us back."""
        while not self.stopping:
            await asyncio.sleep(LIVENESS_INTERVAL)
            if self.stopping:
                return
            try:
                await self._write_liveness()
                self.runtime.circuits = await health.read_circuits(self.redis, self.names, self.pools)
            except Exception as exc:
                log.warning("could not write worker liveness (%s)", type(exc).__name__)

    async def _tally_loop(self) -> None:
        """Write the batched counters (provider-health successes) a few times a second."""
        while not self.stopping:
            await asyncio.sleep(TALLY_INTERVAL)
            try:
                await self._flush_tallies()
            except Exception as exc:
                log.warning("could not write counters (%s); keeping them for the next try", type(exc).__name__)

    async def _heartbeat_loop(self) -> None:
        """Jobs say they are alive: a ``start`` soon after pickup unless they already answered, then a
        heartbeat whenever a slow upstream keeps them quiet, so the web tier tells them from dead ones."""
        while not self.stopping:
            await asyncio.sleep(0.1)
            for pub in list(self.runtime.publishers.values()):
                if pub.announce_if_quiet(START_AFTER):
                    asyncio.create_task(_quiet(pub.send("start")))
                elif pub.idle_for() >= HEARTBEAT_AFTER:
                    asyncio.create_task(_quiet(pub.send("heartbeat")))


async def _quiet(coro: Any) -> None:
    try:
        await coro
    except Exception:
        pass


async def run_pools(settings: Settings, pools: tuple[str, ...]) -> None:
    if not pools:
        raise SystemExit("no provider pools to run: configure a provider (e.g. OPENAI_API_KEY) or pass --providers")
    init_sentry(settings, "worker")
    init_tracing(settings.env, "worker")
    process = PoolProcess(settings, pools)
    try:
        await process.run()
    finally:
        flush_sentry()
        shutdown_tracing()
