"""Enqueue → pickup, measured against a real ``megabrain worker`` without touching the gateway.

We play the web tier: subscribe to a reply channel of our own, enqueue jobs with ``common.queue.enqueue``
(the web tier's exact call), and read the worker's own ``queued_ms`` (its clock at pickup minus the job's
``enqueued_at``, set just before the enqueue call): that is enqueue → pickup. The worker announces itself
on its first event (for a fast upstream, the answer), so the time until that first event is reported too:
pickup plus one upstream call plus one PUBLISH hop (the hop is measured on its own as well). Jobs go one at a time, each after
the previous one finished, so every pickup exercises the idle worker's wake-up path.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import msgspec

from common.names import Names, new_request_id
from common.queue import enqueue
from common.redis import connect
from common.wire import Event, Job, Route, event_decoder, job_encoder
from workers.jobs import JOB_FUNCTION

FINAL = ("result", "error", "done")


class Inbox:
    """One subscription; events routed to per-request queues (as the web tier's relay does)."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis = connect(redis_url, pubsub=True, max_connections=2)
        self.channel = channel
        self.queues: dict[str, asyncio.Queue[tuple[float, Event]]] = {}
        self.pubsub: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.channel)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            arrived = time.perf_counter()
            data = message["data"]
            if data.startswith(b"ping:"):
                key = data.decode()
            else:
                event = event_decoder.decode(data)
                key = event.request_id
            queue = self.queues.get(key)
            if queue is not None:
                queue.put_nowait((arrived, None if data.startswith(b"ping:") else event))  # type: ignore[arg-type]

    def expect(self, key: str) -> asyncio.Queue[tuple[float, Event]]:
        self.queues[key] = asyncio.Queue()
        return self.queues[key]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.pubsub is not None:
            await self.pubsub.aclose()
        await self.redis.aclose()


async def measure(redis_url: str, namespace: str, pool: str, route: Route, body: bytes, *, jobs: int,
                  warmup: int = 5) -> dict[str, list[float]]:
    """Milliseconds per job: ``start_event`` (enqueue call → start event received), ``worker_queued``
    (the worker's own figure), ``publish_hop`` (one PUBLISH → receipt on our subscription)."""
    names = Names(namespace)
    redis = connect(redis_url, max_connections=4)
    inbox = Inbox(redis_url, names.reply_channel("bench-" + secrets.token_hex(4)))
    await inbox.start()
    out: dict[str, list[float]] = {"start_event": [], "worker_queued": [], "publish_hop": []}
    try:
        for i in range(warmup + jobs):
            start_ms, queued_ms = await _one_job(redis, names, inbox, pool, route, body)
            hop_ms = await _one_publish(redis, inbox)
            if i >= warmup:
                out["start_event"].append(start_ms)
                out["publish_hop"].append(hop_ms)
                if queued_ms is not None:
                    out["worker_queued"].append(queued_ms)
    finally:
        await inbox.close()
        await redis.aclose()
    return out


async def _one_job(redis: Any, names: Names, inbox: Inbox, pool: str, route: Route,
                   body: bytes) -> tuple[float, float | None]:
    request_id = new_request_id()
    events = inbox.expect(request_id)
    job = Job(kind="chat", request_id=request_id, reply_channel=inbox.channel, attempt=0, plan=[route],
              deadline=time.time() + 30, body=body, enqueued_at=time.time())
    started = time.perf_counter()
    await enqueue(redis, names, pool, JOB_FUNCTION, f"{request_id}-0-0", job_encoder.encode(job), expires_s=30)
    start_ms: float | None = None
    queued_ms: float | None = None
    try:
        while True:
            arrived, event = await asyncio.wait_for(events.get(), 30)
            if event.hello is not None and start_ms is None:  # the worker's hello rides on its first event
                start_ms = (arrived - started) * 1000
                queued_ms = event.hello.queued_ms
            if event.kind in FINAL:
                break
    finally:
        inbox.queues.pop(request_id, None)
    if start_ms is None:
        raise RuntimeError(f"job finished without a start event (last event: {msgspec.to_builtins(event)})")
    return start_ms, queued_ms


async def _one_publish(redis: Any, inbox: Inbox) -> float:
    key = "ping:" + secrets.token_hex(6)
    events = inbox.expect(key)
    started = time.perf_counter()
    await redis.publish(inbox.channel, key.encode())
    arrived, _ = await asyncio.wait_for(events.get(), 10)
    inbox.queues.pop(key, None)
    return (arrived - started) * 1000
