"""Enqueueing a job on the next candidate of its plan: the one rule, for the web tier and the workers.

The web tier starts a request here (and re-runs it after a lost worker or a missed pickup); a worker
hands a job over here after its provider failed before the first token. Both skip a candidate whose pool
has no live worker or a full queue, and neither starts anything after the request's deadline, so a job
never waits in a queue nobody serves.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from arq.connections import ArqRedis

from common.names import Names
from common.queue import QUEUE_WAIT_SHARE, JobWrite, job_write, pickup_window, write_job
from common.wire import Job, job_encoder

JOB_FUNCTION = "serve"  # the arq function every pool runs (workers/jobs.py)
LIVENESS_TTL = 6.0  # a worker unseen this long is gone (workers/pool.py writes every couple of seconds)

IsLive = Callable[[str], Awaitable[bool]]
Announce = Callable[[Job, str], Awaitable[None]]
WriteJob = Callable[[ArqRedis, JobWrite, int], Awaitable[bool]]  # common.queue.write_job's shape


def job_id(job: Job) -> str:
    return f"{job.request_id}-{job.attempt}-{job.hop}"


async def has_live_worker(redis: ArqRedis, names: Names, pool: str) -> bool:
    return await redis.zcount(names.live_workers(pool), time.time() - LIVENESS_TTL, "+inf") > 0


async def enqueue_candidate(
    redis_of: Callable[[str], ArqRedis],
    names: Names,
    job: Job,
    first_hop: int,
    *,
    is_live: IsLive,
    depth_limit: int,
    pickup_timeout: float,
    announce: Announce | None = None,
    write: WriteJob = write_job,
) -> tuple[Job | None, list[str]]:
    """Enqueue ``job`` on the first candidate from ``first_hop`` that can take it, on the Redis that
    ``redis_of(pool)`` names (``common.redis.Redises.pool``).

    Returns the job as enqueued (its ``hop`` set), or None, and the pools skipped on the way.
    ``announce(job, pool)`` runs just before each enqueue (a worker publishes its ``handoff`` there, so
    the web tier hears of the move before the new worker's first event). ``write`` writes each attempt
    (the web tier's first one also runs the request's admission: ``api/exchange/exchange.py``).
    """
    skipped: list[str] = []
    for hop in range(first_hop, len(job.plan)):
        if time.time() >= job.deadline:
            break
        pool = job.plan[hop].provider
        if not await is_live(pool):
            skipped.append(pool)
            continue
        candidate = msgspec.structs.replace(job, hop=hop, enqueued_at=time.time())
        if announce is not None:
            await announce(candidate, pool)
        planned = job_write(names, pool, JOB_FUNCTION, job_id(candidate), job_encoder.encode(candidate),
                            expires_s=pickup_window(pickup_timeout, job.deadline),
                            priority=bool(candidate.meta.get("key_id")),  # keyed requests before the free tier
                            max_wait_s=pickup_timeout * QUEUE_WAIT_SHARE)  # an overloaded pool refuses at once
        if await write(redis_of(pool), planned, depth_limit):
            return candidate, skipped
        skipped.append(pool)
    return None, skipped
