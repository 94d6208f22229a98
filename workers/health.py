"""Recording upstream outcomes for provider health (circuit breakers), shared through Redis.

One pipelined round trip per attempt: count the outcome in the provider's current time bucket (a hash with
a TTL, so old counts expire by themselves), read the provider's circuits and, after a failure, the window's
counts. A second round trip happens only when a circuit changes state. The rules are in ``router/health.py``.

Layout, per provider ``p`` (see ``common/names.py``):
- ``<ns>:health:p@<bucket>`` hash: ``ok``/``fail``/``ms`` for ``p``, ``ok|<model>``/``fail|<model>``/``ms|<model>``
  per model id, and ``lat<=<s>`` / ``lat>``: ``p``'s answered calls per latency band (the dashboard's
  p50/p95); expires one window after its bucket ends.
- ``<ns>:health:p#circuit`` hash: field ``*`` (the provider) or a model id → epoch seconds the circuit is
  open until; a field past its time is half-open; closing deletes the field.
"""

from __future__ import annotations

import time

from arq.connections import ArqRedis

from common.names import Names
from common.wire import Route
from router.health import (
    BUCKET_SECONDS,
    PROVIDER_FIELD,
    WINDOW_BUCKETS,
    Counts,
    Transition,
    bucket_of,
    bucket_scope,
    circuit_scope,
    counter_field,
    counts_as_failure,
    decide,
    hash_numbers,
    latency_field,
    window,
)
from workers.runtime import Runtime

BUCKET_TTL = BUCKET_SECONDS * (WINDOW_BUCKETS + 1)
CIRCUIT_TTL = 24 * 3600  # hygiene only: a circuit hash nobody writes to for a day goes away


def bucket_key(names: Names, provider: str, bucket: int) -> str:
    return names.health(bucket_scope(provider, bucket))


def circuit_key(names: Names, provider: str) -> str:
    return names.health(circuit_scope(provider))


async def record(runtime: Runtime, route: Route, ok: bool, seconds: float, status: int) -> None:
    """Count one upstream call's outcome for ``route``'s provider and model.

    The common case, a success at a provider with no circuit open or half-open, is only a count: it goes
    to the process's tally (written in batches). Failures, and anything touching a circuit, are decided at
    once against Redis.
    """
    failed = not ok and counts_as_failure(status)
    if not failed and not runtime.circuits.get(route.provider):
        tally_success(runtime, route.provider, route.model, seconds)
        return
    await record_outcome(runtime.redis, runtime.names, route.provider, route.model, ok, seconds, status)


def tally_success(runtime: Runtime, provider: str, model: str, seconds: float, now: float | None = None) -> None:
    current = bucket_key(runtime.names, provider, bucket_of(time.time() if now is None else now))
    for m in (None, model):
        runtime.tally.hincrby(current, counter_field("ok", m), 1)
        runtime.tally.hincrby(current, counter_field("ms", m), int(seconds * 1000))
    runtime.tally.hincrby(current, latency_field(seconds), 1)
    runtime.tally.expire(current, BUCKET_TTL)


async def read_circuits(redis: ArqRedis, names: Names, providers: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each provider's circuit fields (open-until times), for the success fast path above."""
    async with redis.pipeline(transaction=False) as pipe:
        for provider in providers:
            pipe.hgetall(circuit_key(names, provider))
        replies = await pipe.execute()
    return {p: hash_numbers(r) for p, r in zip(providers, replies) if r}


async def record_outcome(redis: ArqRedis, names: Names, provider: str, model: str, ok: bool, seconds: float,
                         status: int, now: float | None = None) -> list[tuple[str | None, Transition]]:
    """Count the outcome and apply any circuit transition; returns the transitions (for tests and logs)."""
    now = time.time() if now is None else now
    failed = not ok and counts_as_failure(status)
    kind = "fail" if failed else "ok"
    current = bucket_key(names, provider, bucket_of(now))
    buckets = [bucket_key(names, provider, b) for b in window(now)]
    scopes: list[str | None] = [None, model]
    async with redis.pipeline(transaction=False) as pipe:
        for m in scopes:
            pipe.hincrby(current, counter_field(kind, m), 1)
            if not failed:
                pipe.hincrby(current, counter_field("ms", m), int(seconds * 1000))
        if not failed:
            pipe.hincrby(current, latency_field(seconds), 1)
        pipe.expire(current, BUCKET_TTL)
        pipe.hgetall(circuit_key(names, provider))
        if failed:
            wanted = [counter_field(k, m) for m in scopes for k in ("ok", "fail")]
            for key in buckets:
                pipe.hmget(key, wanted)
        replies = await pipe.execute()
    writes = 2 * (1 if failed else 2) + (1 if failed else 2)
    circuits = hash_numbers(replies[writes])
    windows = replies[writes + 1:]
    transitions: list[tuple[str | None, Transition]] = []
    for n, m in enumerate(scopes):
        counts = Counts()
        for values in windows:
            counts.ok += _int(values[2 * n])
            counts.fail += _int(values[2 * n + 1])
        change = decide(circuits.get(m or PROVIDER_FIELD), failed, counts, now)
        if change.action:
            transitions.append((m, change))
    if transitions:
        await _apply(redis, names, provider, buckets, transitions)
    return transitions


async def _apply(redis: ArqRedis, names: Names, provider: str, buckets: list[str],
                 transitions: list[tuple[str | None, Transition]]) -> None:
    key = circuit_key(names, provider)
    async with redis.pipeline(transaction=False) as pipe:
        for model, change in transitions:
            name = model or PROVIDER_FIELD
            if change.action == "open":
                pipe.hsetnx(key, name, repr(change.until))
            elif change.action == "reopen":
                pipe.hset(key, name, repr(change.until))
            elif change.action == "close":
                pipe.hdel(key, name)
                for bucket in buckets:  # forget the failures that opened it, or it would trip again at once
                    pipe.hdel(bucket, *(counter_field(k, model) for k in ("ok", "fail", "ms")))
        pipe.expire(key, CIRCUIT_TTL)
        await pipe.execute()


def _int(value: bytes | str | None) -> int:
    return int(value) if value is not None else 0
