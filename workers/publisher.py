"""Publishing a request's events to the web process that waits for them.

Each event is one PUBLISH on that process's reply channel. Stream data is coalesced with a bounded delay:
the first frames go out at once (time to first token never waits), later ones at most one PUBLISH per
``FLUSH_INTERVAL``, and frames still waiting when the stream ends ride on its ``done`` event. A fast
upstream's answer is then two messages (first token, rest + done) instead of one per token, and a slow
one's tokens, spaced wider than the interval, still go out the moment they arrive.

PUBLISH returns how many subscribers got the message: zero means the web process is gone, and the job
stops instead of generating tokens nobody will read — unless the job keeps its events (a resumable chat
stream, ``workers/keeper.py``): then its client gets them through any web process, and it runs on.

A request's final event (its answer, the closing frames of a stream, or its error) is published by its
settlement instead (``finish``): the script that bills it or releases its reservation publishes it in the
same atomic step, so nothing can see an answer that is not billed yet, and a superseded attempt's final
event is never published at all (``common/settlement.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from arq.connections import ArqRedis

from common.mux import mux_of
from common.names import Names
from common.settlement import REPEAT, Settled, Settlement, settle
from common.wire import EVENT_PART_BYTES, UNSEQUENCED_KINDS, Event, EventKind, Hello, KeepEvents, event_encoder
from workers.keeper import KEEP, Keeper, chat_error


FLUSH_INTERVAL = 0.002  # seconds: the most a stream frame waits for company (issue 15: ≤ 2 ms)


class ReceiverGone(Exception):
    """Nobody wants this request's events any more: its web process is gone, or it cancelled the job."""


class Publisher:
    """The events of one job. ``hello`` (worker id, provider, queue wait) rides on the first event.

    A fast job therefore announces its pickup with its answer, in one PUBLISH; a slow one gets an explicit
    ``start`` from the pool's ticker (``announce_if_quiet``) so the web tier's pickup deadline is met.
    """

    def __init__(self, redis: ArqRedis, channel: str, request_id: str, attempt: int, seq: int = 0,
                 hello: Hello | None = None, *, settler: ArqRedis | None = None, names: Names | None = None,
                 keep: KeepEvents | None = None) -> None:
        self.redis = redis
        self.settler = settler or redis  # where settlements run: the main Redis (usage, budgets)
        self.names = names
        self.channel = channel
        self.request_id = request_id
        self.attempt = attempt
        self.seq = seq
        self.hello = hello
        self.started = time.monotonic()
        self.last_sent = self.started
        self.committed = False  # stream data reached the client side: no retry or fallback any more
        self.first_data_at: float | None = None  # monotonic time of the first stream data (time to first token)
        self.cancelled = False  # set with the job's cancel: also stops a job whose cancel was swallowed
        self.native = False  # stream data is in the client's own protocol (``Job.native``)
        self.progress: Any = None  # the stream's ``workers.accounting.Progress``: its bill if its client leaves
        self._pending: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the next data PUBLISH, when one went out just now
        self._failure: BaseException | None = None
        self._lock = asyncio.Lock()  # one PUBLISH at a time, so events arrive in seq order
        # a resumable chat stream's events, kept here (workers/keeper.py): only on the main Redis
        self.keeper = Keeper(keep) if keep is not None and names is not None and self.settler is redis else None

    async def send(self, kind: EventKind, data: bytes = b"", **fields: Any) -> None:
        """Publish one event now, after any stream data still pending, to keep the order.

        Pending frames ride on a ``done`` (its data is frames too) instead of a PUBLISH of their own.
        ``fields`` are the typed ``Event`` fields: ``status``, ``usage``, ``retry_after``, ``handoff``…
        """
        if self.cancelled:
            raise ReceiverGone()
        held = self._take_pending()
        await self.flush()
        if held and kind == "done":
            data = held + data
        elif held:
            await self._publish("data", held, self._data_fields())
        await self._publish(kind, data, fields)

    async def finish(self, kind: EventKind, data: bytes, settlement: Settlement, **fields: Any) -> Settled:
        """Publish the final event inside ``settlement`` (after any stream data still pending, as ``send``).

        Refused (a superseded attempt, a request the web tier ended): nothing is published. With the pool on
        its own Redis the settlement runs first on the main one and the event is published after it."""
        assert self.names is not None, "a publisher that settles needs the key names"
        held = self._take_pending()
        await self.flush()
        if held and kind == "done":
            data = held + data
        elif held:
            await self._publish("data", held, self._data_fields())
        async with self._lock:
            whole = data
            data = await self._publish_parts(data)
            self.seq += 1
            keep = None
            if self.keeper is not None:
                keep = self.keeper.final(whole if kind == "done" else chat_error(whole))
                fields["kept"] = keep is not None
            event = event_encoder.encode(self._event(kind, data, fields))
            here = self.settler is self.redis
            result = await settle(self.settler, self.names, settlement, self.channel if here else "", event,
                                  keep=keep)
            if not here and not result.refused and result.status != REPEAT:
                await mux_of(self.redis).execute("PUBLISH", self.channel, event)
            self.last_sent = time.monotonic()
        return result

    async def data_now(self, piece: bytes) -> None:
        """Publish one piece of a large body (audio, an image answer) as its own ``data`` event, at once:
        nothing is gained by coalescing pieces already as large as an event may be."""
        if self.cancelled:
            raise ReceiverGone()
        self.committed = True
        await self.send("data", piece, **self._data_fields())

    def data(self, frames: bytes) -> None:
        """Queue stream frames: the first leave at once, later ones within ``FLUSH_INTERVAL``."""
        if self._failure is not None:
            raise ReceiverGone() from self._failure
        if self.cancelled:
            raise ReceiverGone()
        first = not self.committed
        if first:
            self.first_data_at = time.monotonic()
        self.committed = True
        self._pending.append(frames)
        if self._timer is not None or (self._flusher is not None and not self._flusher.done()):
            return  # already on its way: the running PUBLISH or the timer takes these too
        wait = 0.0 if first else self.last_sent + FLUSH_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flusher = asyncio.create_task(self._drain())
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._start_drain)

    async def flush(self) -> None:
        """Wait for the PUBLISH in flight (frames still pending stay pending)."""
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        if self._failure is not None:
            raise ReceiverGone() from self._failure

    def _take_pending(self) -> bytes:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = b"".join(self._pending)
        self._pending.clear()
        return held

    def _start_drain(self) -> None:
        self._timer = None
        if self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._drain())

    def _data_fields(self) -> dict[str, Any]:
        return {"native": True} if self.native else {}

    async def _drain(self) -> None:
        batch = self._take_pending()
        if not batch:  # a send() took the frames first, to ride on its event
            return
        try:
            await self._publish("data", batch, self._data_fields())
        except BaseException as exc:  # surfaced to the job at its next data()/flush()
            self._failure = exc
            return
        if self._pending:  # arrived during the PUBLISH: next interval
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._start_drain)

    def _event(self, kind: EventKind, data: bytes, fields: dict[str, Any]) -> Event:
        """The next event (its ``seq`` taken already), with ``hello`` if it is the job's first."""
        if self.hello is not None:
            self.hello.sent_at = time.time()  # the relay's lag metric: publish → delivery
            fields["hello"] = self.hello
            self.hello = None
        return Event(self.request_id, self.attempt, self.seq, kind, data, **fields)

    async def _publish_parts(self, data: bytes) -> bytes:
        """Publish all but the last ``EVENT_PART_BYTES`` of ``data`` as "part" events (the lock held, so
        they stay in order), and return what the event itself carries."""
        if len(data) <= EVENT_PART_BYTES:
            return data
        view = memoryview(data)
        cut = len(data) - (len(data) - 1) % EVENT_PART_BYTES - 1  # the last piece: 1..EVENT_PART_BYTES bytes
        mux = mux_of(self.redis)
        for start in range(0, cut, EVENT_PART_BYTES):
            self.seq += 1
            part = Event(self.request_id, self.attempt, self.seq, "part", bytes(view[start:start + EVENT_PART_BYTES]))
            await mux.execute("PUBLISH", self.channel, event_encoder.encode(part))
        return bytes(view[cut:])

    async def _publish(self, kind: EventKind, data: bytes, fields: dict[str, Any]) -> None:
        async with self._lock:
            entry = self.keeper.entry(data) if self.keeper is not None and kind == "data" else None
            data = await self._publish_parts(data)
            if kind not in UNSEQUENCED_KINDS:
                self.seq += 1
            if entry is not None:
                fields["kept"] = True
            event = event_encoder.encode(self._event(kind, data, fields))
            mux = mux_of(self.redis)
            if entry is None:
                receivers = await mux.execute("PUBLISH", self.channel, event)
            else:  # the publish and the keep in one call (workers/keeper.py)
                assert self.names is not None
                entry_id, entry_kind, blob, expire = entry
                receivers = await mux.evalsha(KEEP, [self.names.answer_events(self.request_id),
                                                     self.names.fence(self.request_id)],
                                              [self.channel, event, self.attempt, entry_id, entry_kind, blob, expire])
            self.last_sent = time.monotonic()
        if receivers == 0 and not (self.keeper is not None and self.keeper.active):
            raise ReceiverGone()  # nobody can get the rest (a kept answer's reader comes through any web process)

    def announce_if_quiet(self, after: float) -> bool:
        """True when the job has said nothing for ``after`` seconds since pickup: time for a ``start``."""
        return self.hello is not None and not self._lock.locked() and time.monotonic() - self.started >= after

    def idle_for(self) -> float:
        """Seconds since the last event; the pool's ticker sends a heartbeat after a quiet spell."""
        return 0.0 if self._lock.locked() else time.monotonic() - self.last_sent

    async def close(self) -> None:
        """Stop the background flusher without sending (the job is being abandoned)."""
        self._take_pending()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            try:
                await self._flusher
            except BaseException:
                pass
