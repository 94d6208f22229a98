"""The relay: one pub/sub subscription per web process (per Redis it enqueues to), fanning events out to
waiting requests.

Every job carries this process's reply channel and its request id; workers publish there, and the relay
hands each event to the request's inbox in memory. One subscription for the whole process means no
SUBSCRIBE round trip per request, no subscribe/publish race, and one Redis connection however many
requests are waiting.

Each request's inbox holds at most ``buffer_limit`` bytes of stream data its client has not read yet: a
reader that falls further behind loses its own stream (``overflow``), never the process's subscription.

Pub/sub delivers at most once: if the subscription drops, events published meanwhile are lost. New requests
are refused until the subscription is back; a waiting request fails only if it lost an event that mattered:
events carry a sequence number per attempt (but "start" and "heartbeat", which only say "alive"), so its
next event shows a gap, and one that hears nothing at all after the relay is back is presumed to have lost
its final event (``api/exchange/exchange.py``). Requests that lost nothing go on. With pools on several
Redis instances (common/redis.py ``Redises``) the process subscribes to its one channel on each; it is
ready when every subscription is.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from arq.connections import ArqRedis

from common import metrics
from common.subscription import subscribe
from common.wire import UNSEQUENCED_KINDS, Event, event_decoder

log = logging.getLogger("megabrain.relay")


class Inbox:
    """Events of one request, filtered: only the current attempt, each sequence number once, in order; the
    "part" events of a large event's data joined back onto it."""

    __slots__ = ("queue", "attempt", "last_seq", "parts", "limit", "queued", "overflowed", "suspect", "heard_at")

    def __init__(self, limit: int = 1 << 20) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.attempt = 0
        self.last_seq = 0
        self.parts: list[bytes] = []  # pieces of the next event's data (common/wire.py EVENT_PART_BYTES)
        self.limit = limit  # stream bytes that may wait for a slow client (MEGABRAIN_STREAM_BUFFER_BYTES)
        self.queued = 0  # stream bytes waiting now
        self.overflowed = False
        self.suspect = False  # the relay lost its subscription since this request's last event
        self.heard_at = time.monotonic()  # the last event, or the relay's resubscription

    def deliver(self, event: Event) -> None:
        if self.overflowed or event.attempt != self.attempt:
            return  # a reader too far behind, or a stale attempt (a job the web tier gave up on)
        self.heard_at = time.monotonic()
        if event.kind in UNSEQUENCED_KINDS:  # "alive" only: its loss or its order costs nothing
            self.queue.put_nowait(event)
            return
        if event.seq <= self.last_seq:
            return  # a duplicate
        if self.suspect:  # the first event after the relay came back: a gap means events were lost
            self.suspect = False
            if event.seq != self.last_seq + 1:
                self.overflowed = True  # nothing more is delivered: the request ends at its next read
                self.queue.put_nowait(RELAY_LOST)
                return
        self.last_seq = event.seq
        if event.kind == "part":
            self.parts.append(event.data)
            return
        if self.parts:
            self.parts.append(event.data)
            event.data = b"".join(self.parts)
            self.parts = []
        if event.kind == "data":  # a stream's frames wait for the client; one event (and the final) always fits
            if self.queued and self.queued + len(event.data) > self.limit:
                self._overflow()
                return
            self.queued += len(event.data)
        self.queue.put_nowait(event)

    def _overflow(self) -> None:
        """The client reads too slowly: drop what waits for it (the memory goes back now) and everything
        after; its request ends with a clear error at its next read, and no other request is touched."""
        self.overflowed = True
        self.parts = []
        self.queued = 0
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(OVERFLOW)

    def _take(self, event: Event) -> Event:
        if event.kind == "data":
            self.queued -= len(event.data)
        return event

    def new_attempt(self) -> int:
        """Start over with a fresh job: events of earlier attempts are dropped from now on."""
        self.attempt += 1
        self.last_seq = 0
        self.parts = []
        while not self.queue.empty():
            self.queue.get_nowait()
        return self.attempt

    async def get(self, timeout: float) -> Event | None:
        if not self.queue.empty():
            return self._take(self.queue.get_nowait())
        try:
            async with asyncio.timeout(timeout):
                return self._take(await self.queue.get())
        except TimeoutError:
            return None


RELAY_LOST = Event("", 0, 0, "relay_lost")
OVERFLOW = Event("", 0, 0, "overflow")


class Relay:
    def __init__(self, redises: list[ArqRedis], channel: str, buffer_limit: int = 1 << 20) -> None:
        self.redises = redises
        self.channel = channel
        self.buffer_limit = buffer_limit  # per request: stream bytes waiting for a slow client
        self.inboxes: dict[str, Inbox] = {}
        self.ready = asyncio.Event()
        self._subscribed: set[int] = set()  # indexes into redises
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.losses = 0  # subscriptions lost so far (for tests and logs)

    async def start(self, timeout: float = 5.0) -> None:
        self._tasks = [asyncio.create_task(self._run(i), name=f"relay-{i}") for i in range(len(self.redises))]
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            log.warning("relay not subscribed yet (Redis unreachable?); requests get 503 until it is")

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)  # bounded, like every shutdown step

    def open(self, request_id: str) -> Inbox:
        inbox = Inbox(self.buffer_limit)
        self.inboxes[request_id] = inbox
        return inbox

    def close(self, request_id: str) -> None:
        self.inboxes.pop(request_id, None)

    def _mark(self, index: int, subscribed: bool) -> None:
        (self._subscribed.add if subscribed else self._subscribed.discard)(index)
        if len(self._subscribed) == len(self.redises):
            self.ready.set()
        else:
            self.ready.clear()

    async def _run(self, index: int) -> None:
        delay = 0.1

        def subscribed() -> None:  # confirmed: from here on nothing published to us is missed
            nonlocal delay
            now = time.monotonic()
            for inbox in self.inboxes.values():
                if inbox.suspect:
                    inbox.heard_at = now  # their silence counts from here (exchange.py SUSPECT_WAIT)
            self._mark(index, True)
            delay = 0.1
            log.info("relay subscribed to %s", self.channel)

        while not self._stopping:
            try:
                await subscribe(self.redises[index], [self.channel], self._dispatch, subscribed)
            except asyncio.CancelledError:
                self._mark(index, False)
                raise
            except Exception as exc:
                if index in self._subscribed:
                    log.warning("relay lost its subscription (%s); resubscribing", type(exc).__name__)
                self._mark(index, False)
                self._suspect_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            event = event_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("relay dropped an undecodable event")
            return
        inbox = self.inboxes.get(event.request_id)
        if inbox is not None:
            if event.kind == "cancel":  # from a web process, not the worker: no attempt or sequence
                inbox.queue.put_nowait(event)
            else:
                inbox.deliver(event)
        if event.hello is not None:
            metrics.relay_event(time.time() - event.hello.sent_at)

    def _suspect_all(self) -> None:
        """Events published while the subscription was down are lost. Only the requests that lost one fail:
        each finds out by the gap in its sequence at its next event (api/exchange/exchange.py fails one
        that hears nothing more at all, whose final event may have been among them)."""
        self.losses += 1
        now = time.monotonic()
        for inbox in self.inboxes.values():
            inbox.suspect = True
            inbox.heard_at = now

