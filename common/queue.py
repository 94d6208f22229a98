"""Enqueueing a job: an arq job, written in one round trip, with a wake-up for idle workers.

arq's own ``enqueue_job`` spends three round trips on a uniqueness check we do not need (request ids are
random). We write exactly the keys arq's worker reads (``arq:job:<id>`` with the serialized job, and the
id in the queue's sorted set) and publish a nudge on the pool's wake channel in the same pipeline, so a
waiting worker starts the job at once instead of at its next poll. No MULTI/EXEC: Redis runs one
connection's commands in order, so a worker sees the id only after the payload exists and is nudged only
after both, and a job that fails the depth check is withdrawn like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job

from common.mux import Script, mux_of
from common.names import Names
from common.redis import job_serializer


@dataclass(frozen=True)
class JobWrite:
    """What enqueueing one job writes, in arq's layout: the serialized job under ``job_key`` with the pickup
    window as its TTL, ``job_id`` in the ``queue`` sorted set (scored by enqueue time; a keyed request's job
    a class earlier, ``PRIORITY_HEAD_START_MS``), and a nudge on the pool's ``wake_channel``. Written by
    ``write_job``, or by the admission script in the same round trip as the request's limits
    (``api/access/limits.py``, which keeps this order), which first tries to hand the job to an idle worker
    of ``pool`` (one of ``idle_workers``) instead."""

    queue: str
    job_key: str
    job_id: str
    data: bytes
    score_ms: int
    ttl_ms: int
    wake_channel: str
    pool: str
    idle_workers: str
    max_wait_ms: int = 0  # refuse while the queue's next job has waited longer than this (0: no bound)


# Priority classes in one queue: a job of a request with an API key is scored this much earlier than its
# enqueue time, so the claim (lowest score first, any score up to now) takes every waiting keyed job before
# any keyless (free-tier) one, each class first come, first served. Far larger than any wait, and still a
# positive epoch: ``enqueued_ms`` undoes it for whoever reads a score as a time (the queue-age metric).
PRIORITY_HEAD_START_MS = 10**12

# An overloaded pool refuses at once: while the job its workers take next has waited longer than this share
# of the pickup window, the queue is not draining fast enough to serve a new job within that window, so
# the new one is refused (503, Retry-After) at enqueue instead of after waiting the window out. Measured
# on the queue itself (its head's age), it follows the pool's live capacity and service time whatever they
# are, and never refuses while a free slot keeps the queue moving (a head that waits is a full pool). A
# keyed job is refused only for a keyed head: it goes ahead of every waiting keyless one.
QUEUE_WAIT_SHARE = 0.5


def enqueued_ms(score: float, now_ms: float) -> float:
    """The enqueue time (epoch ms) of a queued job from its score, whatever its class."""
    return score + PRIORITY_HEAD_START_MS if score < now_ms - PRIORITY_HEAD_START_MS / 2 else score


def job_write(names: Names, pool: str, function: str, job_id: str, payload: bytes, *, expires_s: float,
              priority: bool = False, max_wait_s: float = 0) -> JobWrite:
    """``payload`` for ``function`` on ``pool``'s queue. ``expires_s`` bounds how long the job may wait
    (``pickup_window``): an expired job is never run, so a backlog after an outage never runs requests whose
    clients are gone, and a prompt whose web process died does not sit in Redis beyond its pickup window.
    ``priority``: the job goes ahead of every keyless one (``PRIORITY_HEAD_START_MS``). ``max_wait_s``: the
    job is refused while the queue's next job has waited longer (``QUEUE_WAIT_SHARE``; 0: no bound)."""
    now_ms = int(time.time() * 1000)
    return JobWrite(
        queue=names.queue(pool),
        job_key=job_key_prefix + job_id,
        job_id=job_id,
        data=serialize_job(function, (payload,), {}, None, now_ms, serializer=job_serializer),
        score_ms=now_ms - PRIORITY_HEAD_START_MS if priority else now_ms,
        ttl_ms=max(1, int(expires_s * 1000)),
        wake_channel=names.wake_channel(pool),
        pool=pool,
        idle_workers=names.idle_workers(pool),
        max_wait_ms=max(0, int(max_wait_s * 1000)),
    )


async def write_job(redis: ArqRedis, write: JobWrite, depth_limit: int | None = None) -> bool:
    """Enqueue ``write`` in one round trip. Returns False (nothing left queued) if the queue is over
    ``depth_limit``, or its next job has waited longer than ``write.max_wait_ms``."""
    commands: list[tuple[object, ...]] = [] if depth_limit is None else [("ZCARD", write.queue)]
    if write.max_wait_ms:
        commands.append(("ZRANGE", write.queue, 0, 0, "WITHSCORES"))
    checks = len(commands)
    commands += [
        ("PSETEX", write.job_key, write.ttl_ms, write.data),
        ("ZADD", write.queue, write.score_ms, write.job_id),
        ("PUBLISH", write.wake_channel, b""),
    ]
    results = await mux_of(redis).pipeline(commands)
    now_ms = time.time() * 1000
    over = depth_limit is not None and results[0] >= depth_limit
    if write.max_wait_ms and not over:
        head = results[checks - 1]
        if head:  # a keyed job goes ahead of every keyless one: only a keyed head's wait is its own
            score, keyed = float(head[1]), write.score_ms < now_ms - PRIORITY_HEAD_START_MS / 2
            keyed_head = score < now_ms - PRIORITY_HEAD_START_MS / 2
            over = now_ms - enqueued_ms(score, now_ms) > write.max_wait_ms and (keyed_head or not keyed)
    if over:
        await _withdraw(redis, write.queue, write.job_key, write.job_id)
        return False
    return True


async def enqueue(redis: ArqRedis, names: Names, pool: str, function: str, job_id: str, payload: bytes, *,
                  expires_s: float, depth_limit: int | None = None) -> bool:
    """``job_write`` and ``write_job`` in one call."""
    write = job_write(names, pool, function, job_id, payload, expires_s=expires_s)
    return await write_job(redis, write, depth_limit)


_WITHDRAW = Script("""
if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then
  redis.call('del', KEYS[2])
  return 1
end
return 0
""")


async def withdraw(redis: ArqRedis, names: Names, pool: str, job_id: str) -> bool:
    """Take a job back if no worker has claimed it. True means it will never run.

    Workers take a job off the queue when they claim it (``workers/pool.py``), so "still queued" means
    "not started"; the script makes the check and the removal one atomic step.
    """
    return await _withdraw(redis, names.queue(pool), job_key_prefix + job_id, job_id)


def withdraw_command(names: Names, pool: str, job_id: str) -> tuple[Any, ...]:
    """``withdraw`` as one EVAL (the script's source, never NOSCRIPT): for a rare path that must go out in
    one write, right behind a command already sent (``api/exchange/exchange.py``)."""
    return ("EVAL", _WITHDRAW.source, 2, names.queue(pool), job_key_prefix + job_id, job_id)


async def _withdraw(redis: ArqRedis, queue: str, job_key: str, job_id: str) -> bool:
    return bool(await mux_of(redis).evalsha(_WITHDRAW, [queue, job_key], [job_id]))


IDLE_FRESH = 30  # seconds: an idle worker's registration older than this is dropped, not trusted (its
# worker refreshes it every couple of seconds: workers/pool.py)

PICKUP_SLACK = 2.0  # seconds a payload outlives its pickup deadline, for a web tier that withdraws late


def pickup_window(pickup_timeout: float, deadline: float) -> float:
    """How long a queued payload may wait for a worker: a job not claimed within ``pickup_timeout`` is
    withdrawn by the web tier anyway (the next candidate or a 503), and never past the request's deadline."""
    return max(1.0, min(deadline - time.time(), pickup_timeout + PICKUP_SLACK))
