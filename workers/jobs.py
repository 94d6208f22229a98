"""The arq job every pool runs: serve one request at one provider, retrying, then handing it on.

Flow of a job: announce ``start`` (the web tier now knows a live worker has it), call the provider with
bounded retries, then either settle and publish the answer, hand the job to the next candidate's pool
(only while nothing has reached the client), or settle it as failed and publish one error. Any failure
after stream data was sent ends the stream with an error event: a stream is never silently restarted.

A job ends in at most one settlement (``common/settlement.py``), which carries its final event: the bill
with the answer, the reservation's release with the error. A job the web tier cancelled or superseded is
refused there (what its upstream did is counted as unbilled, never charged), except a stream whose client
left mid-way: the web tier only stops it, and it bills what its upstream did so far (``_left``). A job
abandoned at shutdown settles nothing, since the web tier re-runs it or ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common import metrics, telemetry, tracing
from common.errors import GatewayError
from common.candidates import JOB_FUNCTION, enqueue_candidate, has_live_worker, job_id
from common.settlement import Settled, Settlement, settle
from common.wire import EventKind, Handoff, Hello, Job, Route, job_decoder
from workers import accounting, health
from workers.publisher import Publisher, ReceiverGone
from workers.providers.base import UpstreamError
from workers.retry import next_delay
from workers.runtime import Runtime

log = logging.getLogger("megabrain.worker")

@dataclass
class Answer:
    """What one served attempt produced, for the job to settle and publish in one step: the final event
    (``result``, or a stream's closing ``done``), the usage that bills it and why it ended."""

    kind: EventKind
    data: bytes
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # more of the event: ``native``, ``content_type``


# kind -> coroutine doing one attempt at one provider; returns its answer; raises UpstreamError
Handler = Callable[[Runtime, Job, Route, Publisher], Awaitable[Answer]]
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
    """arq entry point. A cancel from the web tier (client gone, or the request re-run elsewhere) ends this
    job quietly, after counting it where it is refused (or billing what a stream its client left cost:
    ``_left``); any other cancellation (the worker shutting down) propagates."""
    runtime: Runtime = ctx["runtime"]
    try:
        job = job_decoder.decode(payload)
    except msgspec.MsgspecError as exc:
        await _refuse_payload(runtime, payload, exc)
        return
    task = asyncio.current_task()
    assert task is not None
    attempt = (job.request_id, job.attempt)
    route = job.plan[job.hop]
    queued_ms = round((time.time() - job.enqueued_at) * 1000, 3) if job.enqueued_at else None
    pub = Publisher(runtime.redises.pool(route.provider), job.reply_channel, job.request_id, job.attempt, job.seq,
                    hello=Hello(runtime.worker_id, route.provider, queued_ms, 0.0), settler=runtime.redis,
                    names=runtime.names, keep=job.keep)
    runtime.active[attempt] = task
    runtime.publishers[attempt] = pub
    try:
        await _run(runtime, job, pub, queued_ms)
    except asyncio.CancelledError:
        if attempt not in runtime.cancelled:
            raise
        task.uncancel()
        log.info("request %s attempt %d cancelled by the web tier", job.request_id, job.attempt)
        await _quiet_settle(runtime, job, _left(runtime, job, pub))
    finally:
        runtime.publishers.pop(attempt, None)
        await pub.close()
        runtime.active.pop(attempt, None)
        runtime.cancelled.discard(attempt)


def _left(runtime: Runtime, job: Job, pub: Publisher) -> Settlement:
    """The settlement of an attempt nobody waits for any more. A stream the web tier stopped after it sent
    data (its client left mid-way) is billed for what its upstream did so far (``accounting.abandoned``); the
    web tier leaves its fence open for that. Anything else settles as failed: after the web tier closed or
    superseded it, that is refused and counted as unbilled upstream work, as is a bill its fence refuses."""
    if pub.cancelled and pub.committed and pub.progress is not None:
        return accounting.abandoned(runtime, job, job.plan[job.hop], pub.progress)
    usage = pub.progress.so_far() if pub.progress is not None else None
    return accounting.failed(job, usage)


async def _run(runtime: Runtime, job: Job, pub: Publisher, queued_ms: float | None) -> None:
    route = job.plan[job.hop]
    span = tracing.start_job(job, route, runtime.worker_id, queued_ms) if job.trace else None
    failure: str | None = None
    try:
        try:
            await _attempts(runtime, job, route, pub, span)
        except UpstreamError as error:
            failure = "handoff" if await _after_failure(runtime, job, pub, error, span) else error.error_type
        except GatewayError as error:
            failure = error.error_type
            await _fail(runtime, job, pub, error)
    except ReceiverGone:
        failure = "receiver_gone"
        log.info("request %s: nobody wants it any more (cancelled, or its web process is gone)", job.request_id)
        await _quiet_settle(runtime, job, _left(runtime, job, pub))  # its reservation goes back now
    except Exception as exc:  # a bug, or a body the web tier should have refused: answer now, not at a timeout
        failure = type(exc).__name__
        log.error("request %s: job crashed (%s)", job.request_id, type(exc).__name__)  # never the payload
        try:
            await _fail(runtime, job, pub, crashed(exc))
        except Exception:  # nobody listening, or Redis trouble: the web tier's liveness checks take over
            pass
    finally:
        if span is not None:
            tracing.end_job(span, None if failure == "handoff" else failure)


async def _fail(runtime: Runtime, job: Job, pub: Publisher, error: GatewayError) -> None:
    """Tell the client ``error``, in the settlement that releases the request's reservation."""
    result = await pub.finish("error", error.body(), accounting.failed(job, runtime=runtime, error=error),
                              status=error.status,
                              retry_after=error.retry_after)
    _refused(runtime, job, result)


async def _quiet_settle(runtime: Runtime, job: Job, settlement: Settlement) -> None:
    """Settle without an event (nobody can be told); Redis trouble is left to the hold's deadline."""
    try:
        _refused(runtime, job, await settle(runtime.redis, runtime.names, settlement))
    except Exception as exc:
        log.warning("request %s: settlement failed (%s)", job.request_id, type(exc).__name__)


def _refused(runtime: Runtime, job: Job, result: Settled) -> None:
    """A settlement refused: this attempt was superseded or ended by the web tier (or came too late). The
    upstream's work is counted as unbilled in Redis by the script; here it is logged and measured."""
    if not result.refused:
        return
    route = job.plan[job.hop]
    metrics.unbilled(route.provider, result.reason)
    log.warning("request %s attempt %d: settlement refused (%s); its upstream work on %s is not billed",
                job.request_id, job.attempt, result.reason, route.provider)


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


async def _attempts(runtime: Runtime, job: Job, route: Route, pub: Publisher, span: Any = None) -> None:
    """Serve the job at ``route``'s provider with bounded retries; ``span``: the job's trace span (each
    attempt gets its own under it)."""
    serve_once = HANDLERS[job.kind]
    retry = 0
    while True:
        if time.time() >= job.deadline:
            raise UpstreamError(0, "the request's deadline passed", retryable=False, fallback=False,
                                error_type="upstream_timeout")
        started = time.monotonic()
        attempt_span, token = tracing.start_attempt(span, job.kind, route, retry) if span is not None else (None, None)
        try:
            answer = await serve_once(runtime, job, route, pub)
        except BaseException as error:
            if attempt_span is not None:
                status = error.status if isinstance(error, UpstreamError) else 0
                kind = error.error_type if isinstance(error, UpstreamError) else type(error).__name__
                tracing.end_attempt(attempt_span, token, status=status, error=kind or str(status))
            if not isinstance(error, UpstreamError):
                raise
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
            seconds = time.monotonic() - started
            await _outcome(runtime, route, True, seconds, 200)
            ttft = pub.first_data_at - started if pub.first_data_at is not None and job.stream else None
            settlement = accounting.bill(runtime, job, route, answer.usage, seconds, answer.finish_reason, ttft)
            if attempt_span is not None:
                tracing.end_attempt(attempt_span, token, status=200, route=route, finish_reason=answer.finish_reason,
                                    usage={"prompt_tokens": settlement.prompt_tokens,
                                           "completion_tokens": settlement.completion_tokens,
                                           "cost": settlement.cost},
                                    output=answer.data if answer.kind == "result" else None)
            result = await pub.finish(answer.kind, answer.data, settlement, usage=answer.usage, **answer.fields)
            _refused(runtime, job, result)
            return


async def _outcome(runtime: Runtime, route: Route, ok: bool, seconds: float, status: int) -> None:
    metrics.upstream_attempt(route.provider, runtime.catalog.label(route.model), status, seconds, ok)
    try:
        await health.record(runtime, route, ok, seconds, status)
    except Exception as exc:  # health bookkeeping must never fail a request
        log.debug("health record failed (%s)", type(exc).__name__)


async def _after_failure(runtime: Runtime, job: Job, pub: Publisher, error: UpstreamError,
                         span: Any = None) -> bool:
    """Hand the request to the next candidate's pool (the web tier's own rule: only while nothing reached
    the client), or tell the client, settling the request as failed. True: handed on."""
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
            tracing.job_event(span, "handoff", to_provider=nxt.provider, to_model=nxt.model, hop=handed.hop)
            return True
    refusal = client_error(error, job)
    telemetry.report_upstream_failure(route.provider, route.model, route.provider, job.request_id,
                                      error.status, error.message)
    await _fail(runtime, job, pub, refusal)
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
