"""Enqueueing a job: an arq job, written in one round trip, with a wake-up for idle workers.

arq's own ``enqueue_job`` spends three round trips on a uniqueness check we do not need (request ids are
random). We write exactly the keys arq's worker reads (``arq:job:<id>`` with the serialized job, and the
id in the queue's sorted set) and publish a nudge on the pool's wake channel in the same MULTI/EXEC, so a
waiting worker starts the job at once instead of at its next poll.
"""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job

from common.names import Names
from common.redis import job_serializer


async def enqueue(
    redis: ArqRedis,
    names: Names,
    pool: str,
    function: str,
    job_id: str,
    payload: bytes,
    *,
    expires_s: float,
    depth_limit: int | None = None,
) -> bool:
    """Put ``payload`` on ``pool``'s queue for ``function``. Returns False if the queue is over ``depth_limit``.

    ``expires_s`` bounds how long the job may wait (``pickup_window``): an expired job is never run, so a
    backlog after an outage never runs requests whose clients are gone, and a prompt whose web process
    died does not sit in Redis beyond its pickup window.
    """
    now_ms = int(time.time() * 1000)
    queue = names.queue(pool)
    job = serialize_job(function, (payload,), {}, None, now_ms, serializer=job_serializer)
    async with redis.pipeline(transaction=True) as pipe:
        if depth_limit is not None:
            pipe.zcard(queue)
        pipe.psetex(job_key_prefix + job_id, max(1, int(expires_s * 1000)), job)
        pipe.zadd(queue, {job_id: now_ms})
        pipe.publish(names.wake_channel(pool), b"")
        results = await pipe.execute()
    if depth_limit is not None and results[0] >= depth_limit:
        await withdraw(redis, names, pool, job_id)
        return False
    return True


_WITHDRAW = """
if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then
  redis.call('del', KEYS[2])
  return 1
end
return 0
"""


async def withdraw(redis: ArqRedis, names: Names, pool: str, job_id: str) -> bool:
    """Take a job back if no worker has claimed it. True means it will never run.

    Workers take a job off the queue when they claim it (``workers/pool.py``), so "still queued" means
    "not started"; the script makes the check and the removal one atomic step.
    """
    removed = await redis.eval(_WITHDRAW, 2, names.queue(pool), job_key_prefix + job_id, job_id)
    return bool(removed)


PICKUP_SLACK = 2.0  # seconds a payload outlives its pickup deadline, for a web tier that withdraws late


def pickup_window(pickup_timeout: float, deadline: float) -> float:
    """How long a queued payload may wait for a worker: a job not claimed within ``pickup_timeout`` is
    withdrawn by the web tier anyway (the next candidate or a 503), and never past the request's deadline."""
    return max(1.0, min(deadline - time.time(), pickup_timeout + PICKUP_SLACK))
