"""One request's conversation with the worker pools, from enqueue to the last event.

The exchange enqueues the job, then reads the request's events and keeps every wait bounded:

- *queued*: a worker must announce ``start`` within ``pickup_timeout``. If none does, the job is withdrawn
  (atomically: it can no longer start) and the next candidate whose pool has a live worker gets it, or
  the client gets a 503.
- *running*: the worker speaks at least every few seconds (data or heartbeats). Silence for
  ``heartbeat_timeout`` means it died: a request that has sent nothing to its client yet is re-run as a
  new attempt (events of the old one are dropped by the inbox); otherwise it ends with a clear error.
- ``handoff``: a worker passed the job to the next provider's pool; back to *queued* there.

If the client goes away, ``cancel`` withdraws the queued job or tells the running worker to stop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from common.errors import GatewayError, unavailable
from common.queue import enqueue, withdraw
from common.wire import Event, Job, job_encoder

if TYPE_CHECKING:
    from api.gateway import Gateway
    from api.relay import Inbox

log = logging.getLogger("megabrain.exchange")

JOB_FUNCTION = "serve"
MAX_RESTARTS = 1  # re-runs after a worker died, for requests that sent nothing yet


class Exchange:
    def __init__(self, gateway: "Gateway", job: Job, inbox: "Inbox") -> None:
        self.gateway = gateway
        self.job = job
        self.inbox = inbox
        self.state = "new"
        self.pool = ""
        self.job_id = ""
        self.worker: str | None = None
        self.phase_deadline = 0.0
        self.client_sent = False  # set by the response writer once bytes went to the client
        self.finished = False
        self.restarts = 0
        self.provider: str | None = None
        # for the request log and metrics (api/observe.py)
        self.started = time.monotonic()
        self.first_byte_at: float | None = None
        self.route_name = "chat"
        self.client_request_id: str | None = None
        self.observed = False
        self.queue_ms: float | None = None  # enqueue → pickup, as the worker measured it

    # -- enqueue ------------------------------------------------------------------------------------------

    async def submit(self) -> None:
        """Enqueue on the first candidate whose pool has a live worker, or refuse with a 503 at once."""
        await self._enqueue_from(self.job.hop)

    async def _enqueue_from(self, hop: int) -> None:
        plan = self.job.plan
        live = self.gateway.live
        tried: list[str] = []
        for index in range(hop, len(plan)):
            pool = plan[index].provider
            if not await live.has_worker(pool):
                tried.append(pool)
                continue
            job = msgspec.structs.replace(self.job, hop=index, meta={**self.job.meta, "enqueued_at": time.time()})
            job_id = f"{job.request_id}-{job.attempt}-{index}"
            ok = await enqueue(
                self.gateway.redises.pool(pool), self.gateway.names, pool, JOB_FUNCTION, job_id, job_encoder.encode(job),
                expires_s=max(1.0, job.deadline - time.time()),
                depth_limit=self.gateway.settings.limits.queue_depth_limit,
            )
            if not ok:
                tried.append(pool)
                continue
            self.job, self.pool, self.job_id, self.state = job, pool, job_id, "queued"
            self.phase_deadline = time.monotonic() + self.gateway.settings.pickup_timeout
            return
        raise unavailable(
            "No worker is serving " + ", ".join(dict.fromkeys(tried)) + " right now (no live worker, or its "
            "queue is full). Try again shortly.",
            retry_after=2,
        )

    # -- events -------------------------------------------------------------------------------------------

    async def next_event(self, wait: float) -> Event | None:
        """The next event for the client, or None if nothing came within ``wait`` (time for a keep-alive).

        Raises ``GatewayError`` when the request cannot complete (no pickup, dead worker, deadline).
        """
        until = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if time.time() >= self.job.deadline:
                raise GatewayError("upstream_timeout", "The request took longer than the gateway allows.")
            timeout = min(until, self.phase_deadline) - now
            event = await self.inbox.get(max(0.0, timeout)) if timeout > 0 else None
            if event is None:
                if time.monotonic() >= self.phase_deadline:
                    await self._phase_expired()
                    continue
                return None
            if "worker" in event.meta:  # the worker's hello: on "start", or on its first real event
                self.state, self.worker = "running", event.meta["worker"]
                self.provider = event.meta.get("provider")
                self.queue_ms = event.meta.get("queued_ms")
            if event.meta.get("abandoned"):  # the worker is shutting down without finishing
                await self._worker_gone()
            elif event.kind in ("start", "heartbeat"):
                self._extend()
            elif event.kind == "handoff":
                self.state, self.worker = "queued", None
                self.pool, self.job_id = event.meta["pool"], event.meta["job_id"]
                self.job = msgspec.structs.replace(self.job, hop=event.meta["hop"])
                self.phase_deadline = time.monotonic() + self.gateway.settings.pickup_timeout
            elif event.meta.get("relay_lost"):
                raise unavailable("The gateway lost its connection to its queue. Try again shortly.")
            else:
                self._extend()
                if event.kind in ("result", "error", "done"):
                    self.finished = True
                return event

    def _extend(self) -> None:
        self.phase_deadline = time.monotonic() + self.gateway.settings.heartbeat_timeout

    async def _phase_expired(self) -> None:
        settings = self.gateway.settings
        if self.state == "queued":
            if await withdraw(self.gateway.redises.pool(self.pool), self.gateway.names, self.pool, self.job_id):
                log.warning("request %s: no pickup on %s within %.1fs", self.job.request_id, self.pool,
                            settings.pickup_timeout)
                self.inbox.new_attempt()
                self.job = msgspec.structs.replace(self.job, attempt=self.inbox.attempt)
                await self._enqueue_from(self.job.hop + 1)
                return
            self.state = "running"  # picked up just now; its start event is on the way
            self._extend()
            return
        await self._worker_gone()  # running, and the worker went silent: presume it dead

    async def _worker_gone(self) -> None:
        """Re-run a request whose worker died or quit, if nothing reached its client yet; else fail it."""
        if not self.client_sent and self.restarts < MAX_RESTARTS:
            self.restarts += 1
            log.warning("request %s: worker %s is gone; re-running", self.job.request_id, self.worker)
            self.inbox.new_attempt()
            self.job = msgspec.structs.replace(self.job, attempt=self.inbox.attempt)
            await self._enqueue_from(self.job.hop)
            return
        raise unavailable("The worker serving this request stopped responding. Try again.")

    # -- client gone --------------------------------------------------------------------------------------

    async def cancel(self) -> None:
        """Stop the work: withdraw a queued job, or ask the running worker to drop it."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.state == "queued" and await withdraw(
                self.gateway.redises.pool(self.pool), self.gateway.names, self.pool, self.job_id
            ):
                return
            if self.worker:
                await self.gateway.redises.pool(self.pool).publish(
                    self.gateway.names.control_channel(self.worker), f"cancel {self.job.request_id}"
                )
        except Exception as exc:  # Redis trouble: the worker stops anyway when it finds nobody listening
            log.info("request %s: cancel failed (%s)", self.job.request_id, type(exc).__name__)
