"""One request's life on the web tier, from its arrival to its single finish.

The exchange is the one owner of a request: the route creates it first thing, so a refusal (401, 404,
429, a 503 for no worker) ends in the same ``finish`` as an answer, and every request is counted and
logged exactly once. ``finish`` is idempotent: it observes (log line, metrics), releases the inbox and,
if work is still pending, withdraws the queued job or tells the running worker to stop.

Between submit and finish it reads the request's events and keeps every wait bounded:

- *queued*: a worker must announce ``start`` within ``pickup_timeout``. If none does, the job is withdrawn
  (atomically: it can no longer start) and the next candidate gets it (``common/candidates.py``), or the
  client gets a 503.
- *running*: the worker's process must stay alive (its liveness key, checked every second by
  ``LiveWorkers``: a killed worker is noticed within seconds), and the job speaks at least every few
  seconds (data or heartbeats). A dead worker, or silence for ``heartbeat_timeout``, ends the attempt: a
  request that has sent nothing to its client yet is re-run as a new attempt (events of the old one are
  dropped by the inbox); otherwise it ends with a clear error.
- ``handoff``: a worker passed the job to the next provider's pool; back to *queued* there.

Money (``common/settlement.py``): a worker settles a request with its final event, in one script. Before
the exchange re-runs a request it *supersedes* the running attempt (moves the request's fence past it and
tells its worker to stop), and before it fails a request, or when its client leaves, it *closes* it (the
fence shut, the reservation's hold returned): either way the old attempt can no longer answer or bill.
Either move loses to a settlement that came first; then the answer is already on its way, and the
exchange waits for it (``ANSWER_WAIT``) instead of re-running or failing the request. A stream whose
client leaves after its first token is the exception: its worker is told to stop but the fence stays open,
so it bills what its upstream did so far; the close follows ``ABANDON_WAIT`` later, a no-op once it has.

A first write that the admission script handed straight to an idle worker process (``api/access/limits.py``)
starts in *running* with that worker known, as a job claimed but not yet announced: its ``start`` is due
within ``CLAIMED_WAIT``, its death is noticed by its liveness key, and a cancel goes to its control channel
(there is no queue entry to withdraw).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from api.exchange import observe
from api.access.admission import admitted
from common import tracing
from common.candidates import enqueue_candidate, job_id
from common.errors import GatewayError, unavailable
from common.mux import mux_of
from common.queue import JobWrite, withdraw, withdraw_command, write_job
from common.settlement import close, close_command, supersede
from common.wire import FINAL_KINDS, Event, Job

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from api.access.check import AccessCheck
    from api.gateway import Gateway
    from api.exchange.relay import Inbox

log = logging.getLogger("megabrain.exchange")

MAX_RESTARTS = 1  # re-runs after a worker died, for requests that sent nothing yet
CLIENT_GONE = 499  # logged only: the connection is already closed

State = Literal["new", "queued", "running", "settled", "finished"]
WORKER_CHECK_EVERY = 0.25  # seconds between looks at LiveWorkers' verdict while waiting (memory only)
CLAIMED_WAIT = 3.0  # a job claimed but not yet announced: its worker's "start" is due within this
ANSWER_WAIT = 5.0  # a request found settled as we ended or re-ran it: its answer (published with it) is due
# After the relay lost its subscription, a running request that hears nothing for this long lost its final
# event, or its worker: a live worker's job says something at least every 5 s (workers/pool.py HEARTBEAT_AFTER)
SUSPECT_WAIT = 8.0
_FORGETTING: set[asyncio.Task[None]] = set()  # closes of unanswered admissions or abandoned streams under way (a task
# needs a reference)
ABANDON_WAIT = 10.0  # a stream its client left: its worker's partial bill is due within this, else we close it


class Exchange:
    def __init__(self, gateway: "Gateway", route_name: str, request_id: str,
                 client_request_id: str | None = None) -> None:
        self.gateway = gateway
        self.route_name = route_name
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.model = ""  # the requested model, until a job names the candidate
        self.job: Job | None = None
        self.inbox: "Inbox | None" = None
        self.state: State = "new"
        self.pool = ""
        self.job_id = ""
        self.worker: str | None = None
        self.provider: str | None = None
        self.phase_deadline = 0.0
        self.restarts = 0
        self.client_sent = False  # set by the response writer once bytes went to the client
        # for the request log and metrics (api/exchange/observe.py)
        self.started = time.monotonic()
        self.first_byte_at: float | None = None
        self.queue_ms: float | None = None  # enqueue → pickup, as the worker measured it
        self.status = CLIENT_GONE  # the outcome so far, recorded by the response writer
        self.usage: dict[str, Any] | None = None
        self.closed: bool | None = None  # our close of the request (common/settlement.py), once: did it win?
        self.answer_due = False  # a settlement beat our close or re-run: its answer is on the way
        self.admission: "AccessCheck | None" = None  # run by the first enqueue (submit)
        self.handed_to: str | None = None  # the worker the last enqueue handed its job to directly
        # what to keep of the answer (a stored Responses object), run once after its end is encoded and
        # before the client gets it: the next turn, sent the moment this one ends, finds it
        self.keep: Callable[[], Awaitable[None]] | None = None
        self.span: Any = None  # the request's trace span when tracing is on (common/tracing.py)

    # -- enqueue ------------------------------------------------------------------------------------------

    async def submit(self, job: Job, admission: "AccessCheck | None" = None) -> None:
        """Enqueue on the first candidate whose pool can take it, or refuse with a 503 at once.

        ``admission`` (not yet run) is run with the first enqueue: one round trip when that pool's queue is
        on the main Redis, where the limits live. Its refusal (401/402/429) is raised from here."""
        self.job = job
        self.admission = admission
        self.inbox = self.gateway.relay.open(job.request_id)
        try:
            await self._enqueue_from(job.hop)
        except GatewayError:
            raise
        except Exception:  # Redis trouble
            raise unavailable("The gateway cannot reach its queue (Redis) right now.") from None

    async def _enqueue_from(self, hop: int) -> None:
        assert self.job is not None
        gateway = self.gateway
        self.handed_to = None
        job, skipped = await enqueue_candidate(
            gateway.redises.pool, gateway.names, self.job, hop, is_live=gateway.live.has_worker,
            depth_limit=gateway.settings.limits.queue_depth_limit, pickup_timeout=gateway.settings.pickup_timeout,
            write=self._admit_and_write if self.admission is not None else write_job,
        )
        if job is None:
            self.state = "settled"  # nothing is queued: nothing to cancel
            await self._close()
            if time.time() >= self.job.deadline:  # out of time, not out of workers: say so (504, not 503)
                raise GatewayError("upstream_timeout", "The request took longer than the gateway allows.")
            raise unavailable(
                "No worker is serving " + (", ".join(dict.fromkeys(skipped)) or "this model") + " right now "
                "(no live worker, or its queue is full). Try again shortly.",
                retry_after=2,
            )
        self.job, self.pool, self.job_id = job, job.plan[job.hop].provider, job_id(job)
        tracing.job_event(self.span, "enqueued", pool=self.pool, hop=job.hop, attempt=job.attempt,
                          handed_to_idle_worker=self.handed_to is not None)
        if self.handed_to is not None:  # an idle worker has it already: as if claimed, its start is due soon
            self.state, self.worker = "running", self.handed_to
            self._extend(min(CLAIMED_WAIT, gateway.settings.heartbeat_timeout))
        else:
            self.state = "queued"
            self.phase_deadline = time.monotonic() + gateway.settings.pickup_timeout

    async def _admit_and_write(self, redis: "ArqRedis", write: JobWrite, depth_limit: int) -> bool:
        """The first write of a request admitted with its enqueue: the limit script queues the job itself
        when the pool's queue shares the limits' Redis (or hands it to an idle worker: ``self.handed_to``);
        elsewhere the script runs first, then the write."""
        check, self.admission = self.admission, None
        if check is None:
            return await write_job(redis, write, depth_limit)
        if redis is self.gateway.redis:
            result = await check.run(enqueue=write, depth_limit=depth_limit, leased=True)
            if result.error is not None and result.error.status == 503:
                self._forget_unanswered(write)
                await asyncio.sleep(0)  # its commands are queued on the connection …
                await asyncio.sleep(0)  # … and written, before the 503 can reach the client
            admitted(result)  # raises the refusal
            self.handed_to = result.handed_to
            return bool(result.enqueued)
        admitted(await check.run(leased=True))
        return await write_job(redis, write, depth_limit)

    def _forget_unanswered(self, write: JobWrite) -> None:
        """The admission script's answer did not come in time (a slow or stalled Redis), and the client is
        told 503; but the script may run all the same, queuing or handing over a job nobody waits for, which
        would then bill a refused request. Withdraw that job and close the request (its settlement refused,
        its hold and leases returned): both in one write on the same multiplexed connection, as EVALs (no
        NOSCRIPT round trip), so Redis runs them right after the script, before anything of a worker's.
        The 503 does not wait for their replies."""
        job = self.job
        assert job is not None
        self.closed = True  # the request's one close is this one
        names = self.gateway.names
        commands = [withdraw_command(names, job.plan[job.hop].provider, write.job_id),
                    close_command(names, self.request_id, job.meta.get("key_id", ""), job.reserved, job.deadline,
                                  account=str(job.meta.get("account") or ""),
                                  credit=str(job.meta.get("credit") or ""))]

        async def forget() -> None:
            try:
                await mux_of(self.gateway.redis).pipeline(commands)
            except Exception as exc:  # the hold's own deadline returns it; nothing else to do
                log.warning("request %s: admission unanswered, not closed (%s)", self.request_id,
                            type(exc).__name__)

        task = asyncio.get_running_loop().create_task(forget())
        _FORGETTING.add(task)
        task.add_done_callback(_FORGETTING.discard)

    # -- events -------------------------------------------------------------------------------------------

    async def next_event(self, wait: float) -> Event | None:
        """The next event for the client, or None if nothing came within ``wait`` (time for a keep-alive).

        Raises ``GatewayError`` when the request cannot complete (no pickup, dead worker, deadline).
        """
        assert self.job is not None and self.inbox is not None
        until = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if time.time() >= self.job.deadline and not self.answer_due:
                await self._fail(GatewayError("upstream_timeout", "The request took longer than the gateway allows."))
                continue
            timeout = min(until, self.phase_deadline, now + WORKER_CHECK_EVERY) - now
            event = await self.inbox.get(max(0.0, timeout)) if timeout > 0 else None
            if event is None:
                if time.monotonic() >= self.phase_deadline:
                    await self._phase_expired()
                    continue
                if self._worker_died():
                    await self._worker_gone()
                    continue
                if self._lost_in_relay():
                    self.inbox.suspect = False
                    log.warning("request %s: silent since the relay came back; its events were lost",
                                self.request_id)
                    await self._worker_gone()
                    continue
                if time.monotonic() >= until:
                    return None
                continue
            if event.hello is not None:  # on "start", or on the worker's first real event
                self.state, self.worker = "running", event.hello.worker
                self.provider, self.queue_ms = event.hello.provider, event.hello.queued_ms
                tracing.job_event(self.span, "picked_up", provider=self.provider, queue_ms=self.queue_ms)
            kind = event.kind
            if kind == "abandoned":
                await self._worker_gone()
            elif kind in ("start", "heartbeat"):
                self._extend()
            elif kind == "handoff" and event.handoff is not None:
                self.state, self.worker = "queued", None
                self.pool, self.job_id = event.handoff.pool, event.handoff.job_id
                self.job = msgspec.structs.replace(self.job, hop=event.handoff.hop)
                tracing.job_event(self.span, "handoff", pool=self.pool, hop=event.handoff.hop)
                self.phase_deadline = time.monotonic() + self.gateway.settings.pickup_timeout
            elif kind == "relay_lost":  # an answer published meanwhile is lost with it: the request ends here
                await self._close()
                self.state = "settled"
                raise unavailable("The gateway lost its connection to its queue. Try again shortly.")
            elif kind == "overflow":  # the client fell too far behind its stream: it alone loses it
                await self._close()
                self.state = "settled"
                await self._stop_worker()
                limit = self.gateway.settings.stream_buffer_bytes
                raise GatewayError("client_too_slow", f"This stream was read too slowly: more than {limit} bytes "
                                   "waited for the client, so the gateway ended it. Read streams promptly.")
            else:
                self._extend()
                if kind in FINAL_KINDS:
                    self.state = "settled"
                return event

    def _extend(self, seconds: float | None = None) -> None:
        self.phase_deadline = time.monotonic() + (seconds or self.gateway.settings.heartbeat_timeout)

    def _lost_in_relay(self) -> bool:
        """Running, silent since the relay resubscribed for longer than a live job can be: its final event
        (or all its worker had to say) went out while the relay was away."""
        assert self.inbox is not None
        return (self.inbox.suspect and self.state == "running" and self.gateway.relay.ready.is_set()
                and time.monotonic() - self.inbox.heard_at > SUSPECT_WAIT)

    def _worker_died(self) -> bool:
        """The running worker's process is gone (SIGKILL, OOM, a lost dyno), by its liveness key."""
        return self.state == "running" and self.worker is not None and self.gateway.live.gone(self.worker)

    async def _phase_expired(self) -> None:
        assert self.job is not None and self.inbox is not None
        settings = self.gateway.settings
        if self.answer_due:  # settled, but its answer never came: only a lost pub/sub message does that
            log.warning("request %s: settled, but its answer did not arrive", self.request_id)
            self.state = "settled"
            raise unavailable("The answer to this request was lost on its way. Try again.")
        if self.state == "queued":
            if await withdraw(self.gateway.redises.pool(self.pool), self.gateway.names, self.pool, self.job_id):
                log.warning("request %s: no pickup on %s within %.1fs", self.request_id, self.pool,
                            settings.pickup_timeout)
                self._new_attempt()
                await self._enqueue_from(self.job.hop + 1)
                return
            self.state = "running"  # picked up just now; its start event is on the way
            self._extend(min(CLAIMED_WAIT, settings.heartbeat_timeout))
            return
        await self._worker_gone()  # running, and the worker went silent: presume it dead

    def _new_attempt(self) -> None:
        assert self.job is not None and self.inbox is not None
        self.job = msgspec.structs.replace(self.job, attempt=self.inbox.new_attempt(), seq=0)

    async def _worker_gone(self) -> None:
        """Re-run a request whose worker died or quit, if nothing reached its client yet; else fail it."""
        assert self.job is not None and self.inbox is not None
        if not self.client_sent and self.restarts < MAX_RESTARTS:
            try:
                moved = await supersede(self.gateway.redis, self.gateway.names, self.request_id,
                                        self.inbox.attempt + 1, self.job.deadline)
            except Exception:  # Redis trouble: without the fence moved, a re-run could be billed twice
                self.state = "settled"
                raise unavailable("The gateway cannot reach its queue (Redis) right now.") from None
            if not moved:
                self._await_answer()
                return
            self.restarts += 1
            tracing.job_event(self.span, "rerun", reason="worker gone")
            log.warning("request %s: worker %s is gone; re-running", self.request_id, self.worker)
            await self._stop_worker()
            self._new_attempt()
            await self._enqueue_from(self.job.hop)
            return
        await self._fail(unavailable("The worker serving this request stopped responding. Try again."))

    async def _fail(self, error: GatewayError) -> None:
        """End the request with ``error``, unless it settled meanwhile (then wait for its answer instead)."""
        if not await self._close():
            self._await_answer()
            return
        self.state = "settled"
        await self._stop_worker()
        raise error

    def _await_answer(self) -> None:
        """A settlement beat our close or re-run: the answer, published by the same script, is on its way."""
        self.answer_due = True
        self.state, self.worker = "running", None  # its worker's fate no longer matters
        self._extend(ANSWER_WAIT)

    # -- the end ------------------------------------------------------------------------------------------

    def record(self, status: int, usage: dict[str, Any] | None = None) -> None:
        """Note the outcome the client got; ``finish`` reports it."""
        self.status = status
        if usage is not None:
            self.usage = usage

    async def kept(self) -> None:
        """Run ``keep`` once. A store that fails loses the stored copy, not the answer (logged)."""
        keep, self.keep = self.keep, None
        if keep is not None:
            try:
                await keep()
            except Exception as exc:
                log.warning("request %s: answer not stored (%s)", self.request_id, type(exc).__name__)

    def sent(self) -> None:
        """Bytes of the answer went to the client: from now on the request is never re-run."""
        if not self.client_sent:
            self.client_sent = True
            self.first_byte_at = time.monotonic()
            tracing.job_event(self.span, "first_byte")

    async def finish(self, status: int | None = None) -> None:
        """The request's one end: observe, release the inbox, stop pending work. Idempotent."""
        if self.state == "finished":
            return
        pending = self.state in ("queued", "running")
        self.state = "finished"
        if status is not None:
            self.status = status
        observe.finished(self, self.status, self.usage)
        if self.inbox is not None:
            self.gateway.relay.close(self.request_id)
        if pending:  # the client went away, or the gateway gave up: stop the worker and the upstream
            await asyncio.shield(self._cancel())

    def let_go(self) -> None:
        """Stop following an answer whose worker keeps its events (``Job.keep``) without stopping it: its
        worker runs on, settles it and keeps its end, for a reader on any web process."""
        if self.state in ("queued", "running"):
            self.state = "settled"

    async def cancel(self) -> bool:
        """Stop the request on its owner's word (a background answer's cancel), as if its client left:
        True when stopped, False when it had settled first (its answer is on the way, and wins)."""
        if self.state not in ("queued", "running"):
            return False
        await self._cancel()
        if self.closed is False:
            self._await_answer()
            return False
        self.state = "settled"
        return True

    async def _cancel(self) -> None:
        """Withdraw a queued job, or close the request and ask the running worker to drop it.

        A stream its client left after data went out is not closed: its worker stops the upstream and bills
        what it did so far (``workers/jobs.py``), and the close follows ``ABANDON_WAIT`` later only in case
        that worker never settles (then it bills nothing, and the hold goes back)."""
        try:
            queue = self.gateway.redises.pool(self.pool) if self.pool else None
            if queue is not None and await withdraw(queue, self.gateway.names, self.pool, self.job_id):
                await self._close()
                return
            if self.client_sent and self.worker and not self.answer_due and self.closed is None:
                await self._stop_worker()
                asyncio.get_running_loop().call_later(min(ABANDON_WAIT, self.gateway.settings.heartbeat_timeout),
                                                      self._close_later)
                return
            if await self._close():  # else it settled: nothing left to stop
                await self._stop_worker()
        except Exception as exc:  # Redis trouble: the worker stops anyway when it finds nobody listening
            log.info("request %s: cancel failed (%s)", self.request_id, type(exc).__name__)

    def _close_later(self) -> None:
        """The close of an abandoned stream whose worker has not settled it by now (a no-op if it did)."""
        task = asyncio.get_running_loop().create_task(self._close_quietly())
        _FORGETTING.add(task)
        task.add_done_callback(_FORGETTING.discard)

    async def _close_quietly(self) -> None:
        await self._close()

    async def _stop_worker(self) -> None:
        """Ask the running attempt's worker to drop it (its settlement would be refused anyway)."""
        if not self.worker or self.job is None:
            return
        try:
            await self.gateway.redises.pool(self.pool).publish(
                self.gateway.names.control_channel(self.worker), f"cancel {self.request_id} {self.job.attempt}")
        except Exception as exc:
            log.info("request %s: cancel not sent (%s)", self.request_id, type(exc).__name__)

    async def _close(self) -> bool:
        """Close the request: no attempt may settle it from now on, and its reservation's hold goes back.
        Once per request. False: an attempt settled it first (its answer is on the way). Redis trouble
        counts as closed: the hold's own deadline returns it."""
        job = self.job
        if self.closed is None:
            if job is None or self.admission is not None:  # (an admission not run yet has admitted nothing)
                self.closed = True
                return True
            try:
                self.closed = await close(self.gateway.redis, self.gateway.names, self.request_id,
                                          job.meta.get("key_id", ""), job.reserved, job.deadline,
                                          str(job.meta.get("account") or ""), str(job.meta.get("credit") or ""))
            except Exception as exc:
                log.info("request %s: not closed (%s)", self.request_id, type(exc).__name__)
                self.closed = True
        return self.closed
