"""Loading the provider-health snapshot the router reads, from the counts workers keep in Redis.

One pipelined round trip for every provider: its circuit hash and the bucket hashes of the current window
(layout in ``workers/health.py``). The Gateway reloads it every couple of seconds, never per request.
"""

from __future__ import annotations

import time

from arq.connections import ArqRedis

from common.names import Names
from router.health import (
    Counts,
    HealthSnapshot,
    bucket_scope,
    build_snapshot,
    circuit_scope,
    hash_numbers,
    sum_buckets,
    window,
)


async def load_snapshot(redis: ArqRedis, names: Names, providers: list[str],
                        now: float | None = None) -> HealthSnapshot:
    now = time.time() if now is None else now
    buckets = window(now)
    async with redis.pipeline(transaction=False) as pipe:
        for provider in providers:
            pipe.hgetall(names.health(circuit_scope(provider)))
            for bucket in buckets:
                pipe.hgetall(names.health(bucket_scope(provider, bucket)))
        replies = await pipe.execute()
    step = 1 + len(buckets)
    circuits: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, Counts]] = {}
    for n, provider in enumerate(providers):
        raw_circuit, *raw_buckets = replies[n * step:(n + 1) * step]
        if raw_circuit:
            circuits[provider] = hash_numbers(raw_circuit, float)
        parsed = [hash_numbers(b, int) for b in raw_buckets if b]
        if parsed:
            counts[provider] = sum_buckets(provider, parsed)
    return build_snapshot(circuits, counts, now)
