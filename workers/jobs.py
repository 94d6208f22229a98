"""The arq job every pool runs: serve one request at one provider, retrying, then handing it on.

Flow of a job: announce ``start`` (the web tier now knows a live worker has it), call the provider with
bounded retries, then either publish the answer, hand the job to the next candidate's pool (only while
nothing has reached the client), or publish one error. Any failure after stream data was sent ends the
stream with an error event: a stream is never silently restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from common import metrics, telemetry
from common.errors import GatewayError
from common.candidates import JOB_FUNCTION, enqueue_candidate, has_live_worker, job_id
from common.wire import Handoff, Hello, Job, Route, job_decoder
from workers import accounting, health
from workers.publisher import Publisher, ReceiverGone
from workers.providers.base import UpstreamError
from workers.retry import next_delay
from workers.runtime import Runtime

log = logging.getLogger("megabrain.worker")

# kind -> coroutine doing one attempt at one provider; returns the usage it saw; raises UpstreamError
Handler = Callable[[Runtime, Job, Route, Publisher], Awaitable[dict[str, Any] | None]]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


class JobAddress(msgspec.Struct):
    """Where a job's events go: all a worker needs to refuse a payload it cannot decode as a ``Job``."""

    request_id: str
    reply_channel: str
    attempt: int = 0


async def serve(ctx: dict[str, Any], payload: bytes) -> None:
    """arq entry point. A cancel from the web tier (client gone) ends this job quietly; any other
    cancellation (the worker shutting down) propagates."""
    runtime: Runtime = ctx["runtime"]
    try:
        job = job_decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        await _refuse_payload(runtime, payload, exc)
        return
    task = asyncio.current_task()
    assert task is not None
    runtime.active[job.request_id] = task
    try:
        await _run(runtime, job)
    except asyncio.CancelledError:
        if job.request_id not in runtime.cancelled:
            raise
        task.uncancel()
        log.info("request %s cancelled by the web tier", job.request_id)
    finally:
        runtime.active.pop(job.request_id, None)
        runtime.cancelled.discard(job.request_id)


async def _run(runtime: Runtime, job: Job) -> None:
    route = job.plan[job.hop]
    queued_ms = round((time.time() - job.enqueued_at) * 1000, 3) if job.enqueued_at else None
    pub = Publisher(runtime.redises.pool(route.provider), job.reply_channel, job.request_id, job.attempt, job.seq,
                    hello=Hello(runtime.worker_id, route.provider, queued_ms, 0.0))
    runtime.publishers[job.request_id] = pub
    settled = False  # served and accounted, or handed on with its reservation
    try:
        try:
            await _attempts(runtime, job, route, pub)
            settled = True
        except UpstreamError as error:
            settled = await _after_failure(runtime, job, pub, error)
        except GatewayError as error:
            await pub.send("error", error.body(), status=error.status, retry_after=error.retry_after)
    except ReceiverGone:
        log.info("request %s: nobody wants it any more (cancelled, or its web process is gone)", job.request_id)
    except Exception as exc:  # a bug, or a body the web tier should have refused: answer now, not at a timeout
        log.error("request %s: job crashed (%s)", job.request_id, type(exc).__name__)  # never the payload
        await _quiet_error(pub, crashed(exc))
    finally:
        runtime.publishers.pop(job.request_id, None)
        if not settled and job.reserved:
            accounting.release_reservation(runtime, job)
        await pub.close()


def crashed(exc: Exception) -> GatewayError:
    return GatewayError("internal_error", f"The worker could not run this request ({type(exc).__name__}).")


async def _refuse_payload(runtime: Runtime, payload: bytes, exc: Exception) -> None:
    """A payload that is no ``Job``: tell its client at once if it says where, else log and drop it."""
    try:
        address = msgspec.msgpack.decode(payload, type=JobAddress)
    except msgspec.MsgspecError:
        log.error("dropped a job payload that names no reply channel (%s)", type(exc).__name__)
        return
    log.error("request %s: undecodable job (%s)", address.request_id, type(exc).__name__)
    pub = Publisher(runtime.redis, address.reply_channel, address.request_id, address.attempt)
    await _quiet_error(pub, crashed(exc))


async def _quiet_error(pub: Publisher, error: GatewayError) -> None:
    try:
        await pub.send("error", error.body(), status=error.status)
    except Exception:  # nobody listening, or Redis trouble: the web tier's liveness checks take over
        pass


async def _attempts(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> None:
    serve_once = HANDLERS[job.kind]
    retry = 0
    while True:
        if time.time() >= job.deadline:
            raise UpstreamError(0, "the request's deadline passed", retryable=False, fallback=False,
                                error_type="upstream_timeout")
        started = time.monotonic()
        try:
            usage = await serve_once(runtime, job, route, pub)
        except UpstreamError as error:
            await _outcome(runtime, route, False, time.monotonic() - started, error.status)
            if pub.committed:
                raise
            delay = next_delay(retry, runtime.settings.upstream_max_retries, error, job.deadline)
            if delay is None:
                raise
            metrics.upstream_retry(route.provider)
            log.info("request %s: %s failed (%s), retry %d in %.2fs", job.request_id, route.provider,
                     error.status or "transport", retry + 1, delay)
            retry += 1
            await asyncio.sleep(delay)
        else:
            await _outcome(runtime, route, True, time.monotonic() - started, 200)
            try:
                await accounting.record(runtime, job, route, usage, time.monotonic() - started)
            except Exception as exc:  # accounting must never fail a request that was served
                log.warning("usage accounting failed (%s)", type(exc).__name__)
            return


async def _outcome(runtime: Runtime, route: Route, ok: bool, seconds: float, status: int) -> None:
    metrics.upstream_attempt(route.provider, runtime.catalog.label(route.model), status, seconds, ok)
    try:
        await health.record(runtime, route, ok, seconds, status)
    except Exception as exc:  # health bookkeeping must never fail a request
        log.debug("health record failed (%s)", type(exc).__name__)


async def _after_failure(runtime: Runtime, job: Job, pub: Publisher, error: UpstreamError) -> bool:
    """Hand the request to the next candidate's pool (True; the web tier's own rule), or tell the client
    (False)."""
    route = job.plan[job.hop]
    if not pub.committed and error.fallback:
        async def announce(candidate: Job, pool: str) -> None:
            await pub.send("handoff", handoff=Handoff(pool, candidate.hop, job_id(candidate)))
            candidate.seq = pub.seq  # the next worker's events follow this one's

        handed, _ = await enqueue_candidate(
            runtime.redises.pool, runtime.names, job, job.hop + 1, announce=announce,
            is_live=lambda pool: has_live_worker(runtime.redises.pool(pool), runtime.names, pool),
            depth_limit=runtime.settings.limits.queue_depth_limit,
            pickup_timeout=runtime.settings.pickup_timeout,
        )
        if handed is not None:
            nxt = handed.plan[handed.hop]
            metrics.fallback(route.provider, nxt.provider)
            log.info("request %s: %s failed, handed to %s", job.request_id, route.provider, nxt.provider)
            return True
    refusal = client_error(error, job)
    telemetry.report_upstream_failure(route.provider, route.model, route.provider, job.request_id,
                                      error.status, error.message)
    await pub.send("error", refusal.body(), status=refusal.status, retry_after=refusal.retry_after)
    return False


def client_error(error: UpstreamError, job: Job) -> GatewayError:
    """What the client is told when no provider could answer."""
    provider = job.plan[job.hop].provider
    if error.retryable or error.error_type == "upstream_timeout":
        kind = "upstream_timeout" if error.error_type == "upstream_timeout" else "temporarily_unavailable"
        return GatewayError(
            kind,
            f"The provider {provider} is not answering right now ({error.message}). Try again shortly.",
            retry_after=error.retry_after if error.retry_after is not None else 2.0,
            code=error.code.upper() if error.code else None,
        )
    return GatewayError(
        error.error_type,
        f"{provider}: {error.message}",
        status=error.client_status,
        param=error.param,
        code=error.code.upper() if isinstance(error.code, str) else None,
    )
