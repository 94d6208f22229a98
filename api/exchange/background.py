"""Detached answers (the Responses API's ``background: true``; a resumable stream of any format): the
answer runs on its own, its events kept, so any web process can serve it later, from any point, to
whoever owns it.

The web process that admitted the request follows the answer in a task of its own (``follow``: the
request's exchange, with no connection attached), and appends each client event it makes (the Responses
stream's SSE events, as the format encodes them) to a Redis stream, ``events:<request id>``, whose entry
ids are ``0-<sequence_number + 1>``: "the events after N" (``starting_after=N``) is one ``XREAD`` from
``0-<N + 1>``, stored ones first, then new ones as they come (``XREAD BLOCK``), each once and in order,
whichever web process reads. A marker entry ends the stream (``end``), or says the events outgrew what
an answer may keep (``cut``, at ``MEGABRAIN_RESPONSE_EVENTS_MAX_BYTES``; the Response object is still
stored and retrievable). The stream, and its owner record (``events:owner:<request id>``: the key, its
account, the following process's reply channel), live ``MEGABRAIN_RESPONSE_EVENTS_TTL`` seconds after
the last write (while the answer runs: that, plus ``MEGABRAIN_REQUEST_TIMEOUT``). Keeping costs one
``XADD`` per event the worker publishes (one batch of SSE events: the worker coalesces its frames), plus
an ``EXPIRE`` with the first and two with the last.

The answer's money is the one request's: the worker, queue and settlement are unchanged, this task is
their one receiver. A reader leaving stops nothing; ``cancel`` (any web process) reaches the following
process over its reply channel (a ``cancel`` event on the relay), which closes the request as a leaving
client would (unless it settled first: then it completes). The answer lives as long as the process that
follows it: a web process that stops ends its background answers as ``failed``. Except a chat completions
stream's and a background Response's (``Job.keep``): its worker keeps its (chat) events in the same entries
(``workers/keeper.py``, its final one by its settlement), marked ``Event.kept``, which the follower only
counts (``EventWriter.skip``); such an answer survives its follower, and its readers do not watch the
follower (``AnswerOwner.worker_keeps``). A background Response's readers rebuild its Responses events from
the kept chat ones (``Rebuilder``, ``rebuilt``; ``rebuilt_final`` for its stored status).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from api.exchange.exchange import Exchange
from common.errors import GatewayError
from common.names import Names
from common.wire import Event, event_encoder

log = logging.getLogger("megabrain.background")

READ_BLOCK_MS = 5000  # one blocking read's wait (below the Redis client's socket timeout)
READ_COUNT = 1000  # entries per read
BATCH, END, CUT = b"f", b"end", b"cut"
LOST_MESSAGE = ("The web process following this answer stopped before the answer ended; the rest of it is "
                "lost and not billed. Send the request again.")
CUT_MESSAGE = ("This answer's events outgrew what is kept for resuming (MEGABRAIN_RESPONSE_EVENTS_MAX_BYTES); "
               "a stored response can be retrieved once it has completed.")


class AnswerOwner(msgspec.Struct, kw_only=True):
    key_id: str
    account: str | None = None
    follower: str = ""  # the reply channel of the web process following the answer
    keepalive: str = ": keep-alive\n\n"  # its format's filler between events (Gemini's: a blank line)
    worker_keeps: bool = False  # its worker keeps its events (``Job.keep``): it outlives its follower
    rebuild: str = ""  # its client events are rebuilt from the kept chat ones: the format ('messages'), or ''
    model: str = ""  # the model its client asked for (which a rebuilt Messages stream names)


_owner_decoder = msgspec.json.Decoder(AnswerOwner)


class EventLog:
    """The kept events of detached answers (a Redis stream per answer)."""

    def __init__(self, redis: Redis, names: Names, ttl: float, max_bytes: int, answer_time: float) -> None:
        self.redis = redis
        self.names = names
        self.ttl = max(1, int(ttl))  # after the answer's last event
        self.live_ttl = self.ttl + max(1, int(answer_time))  # from its first: the longest an answer runs, plus that
        self.max_bytes = max_bytes

    def writer(self, request_id: str) -> "EventWriter":
        return EventWriter(self, self.names.answer_events(request_id), self.names.answer_owner(request_id))

    async def claim(self, request_id: str, owner: AnswerOwner) -> None:
        await self.redis.set(self.names.answer_owner(request_id), msgspec.json.encode(owner), ex=self.live_ttl)

    async def owner(self, request_id: str) -> AnswerOwner | None:
        raw = await self.redis.get(self.names.answer_owner(request_id))
        try:
            return _owner_decoder.decode(raw) if raw else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def read(self, request_id: str, after: int) -> list[tuple[int, bytes, bytes]] | None:
        """Events after sequence number ``after`` as (seq, kind, frame), waiting up to ``READ_BLOCK_MS``
        for one; [] when none came (or none yet: the answer is queued), None when the answer keeps no
        events (never did, or they expired).

        An entry is one batch of events (what one event from the worker made), its id ``0-<last seq + 1>``:
        the entries after ``0-<after + 1>`` hold every event after ``after``, the first maybe a few before it."""
        key = self.names.answer_events(request_id)
        got = await self.redis.xread({key: f"0-{after + 1}"}, count=READ_COUNT, block=READ_BLOCK_MS)
        if not got:
            if await self.redis.exists(key, self.names.answer_owner(request_id)):
                return []
            return None
        out = []
        for entry_id, fields in got[0][1]:
            last = int(entry_id.split(b"-")[1]) - 1
            kind, blob = next(iter(fields.items()))
            if kind != BATCH:
                out.append((last, kind, b""))
                continue
            frames = split_events(blob)
            first = last - len(frames) + 1
            out.extend((first + n, BATCH, frame) for n, frame in enumerate(frames) if first + n > after)
        return out


def split_events(frames: bytes) -> list[bytes]:
    """The SSE events in ``frames`` (comments, such as keep-alives, left out), each ending in a blank line."""
    return [frame + b"\n\n" for frame in frames.split(b"\n\n") if frame and not frame.startswith(b":")]


class EventWriter:
    """One answer's events, appended in order (``add``), then closed (``end``): one ``XADD`` per batch,
    the TTL set with the first and the last."""

    def __init__(self, log: EventLog, key: str, owner_key: str) -> None:
        self.log = log
        self.key = key
        self.owner_key = owner_key
        self.seq = 0  # the next event's sequence number
        self.size = 0
        self.ended = False

    async def add(self, frames: bytes) -> None:
        events = split_events(frames)
        if not events or self.ended:
            return
        self.size += sum(len(e) for e in events)
        if self.size > self.log.max_bytes:
            await self._write(CUT, b"", 1, final=True)
            self.ended = True
            return
        await self._write(BATCH, b"".join(events), len(events), final=False)

    def skip(self, frames: bytes, final: bool) -> None:
        """Count events the worker kept itself (``Event.kept``), so this writer's next one follows them."""
        events = split_events(frames)
        self.size += sum(len(e) for e in events)
        self.seq += len(events)
        if final or self.size > self.log.max_bytes:
            self.ended = True  # its settlement (or its cut) closed the kept events

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            await self._write(END, b"", 1, final=True)

    async def _write(self, kind: bytes, blob: bytes, count: int, final: bool) -> None:
        first = self.seq == 0
        self.seq += count
        async with self.log.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, {kind: blob}, id=f"0-{self.seq}")
            if final:
                pipe.expire(self.key, self.log.ttl)
                pipe.expire(self.owner_key, self.log.ttl)
            elif first:
                pipe.expire(self.key, self.log.live_ttl)
            # an entry its worker kept already (an event on its way here when this one was made) stays
            await pipe.execute(raise_on_error=False)


async def replay(log_: EventLog, request_id: str, after: int, deadline: float,
                 keepalive: bytes = b": keep-alive\n\n",
                 followed: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[bytes]:
    """The answer's SSE events after sequence number ``after``, each with its ``id:``, until its end (or
    ``deadline``, epoch seconds). While nothing comes, ``followed`` is asked whether a web process still
    follows the answer: one killed (SIGKILL, a lost dyno) wrote no end, and its answer ends here with an
    error event (its worker, finding no receiver, stops; nothing more is billed)."""
    while time.time() < deadline:
        entries = await log_.read(request_id, after)
        if entries is None:
            return
        if not entries:
            if followed is not None and not await followed():  # (None: its worker keeps its events)
                yield _error_event(after + 1, "answer_lost", LOST_MESSAGE)
                return
            yield keepalive
            continue
        for seq, kind, frame in entries:
            if kind == END:
                return
            if kind == CUT:
                yield _error_event(seq, "events_not_kept", CUT_MESSAGE)
                return
            after = seq
            yield b"id: " + str(seq).encode() + b"\n" + frame


class Rebuilder:
    """A re-encoding format's client events (the Responses API's), rebuilt from the chat frames its worker
    kept (``Job.keep``): the encoder (``stream``: ``frames`` and ``error``, its ids and ``created`` fixed by
    the request, not the clock) is deterministic, so every web process rebuilds the same events, each
    with the same sequence number, and the same final Response object."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.raw = -1  # the last kept chat event fed
        self.seq = -1  # the last client event made
        self.done = False  # chat's [DONE] came: the worker's final event is kept
        self.ended = False

    def feed(self, seq: int, kind: bytes, frame: bytes) -> list[tuple[int, bytes]]:
        """The client events (seq, SSE event) a kept entry makes."""
        if self.ended:
            return []
        if kind == CUT:
            self.ended = True
            return [(self.seq + 1, _error_event(self.seq + 1, "events_not_kept", CUT_MESSAGE))]
        if kind == END:  # after chat's [DONE]: the answer's end; else its follower's (cancelled): no event
            out = self.stream.frames(Event("", 0, 0, "done")) if self.done else b""
            self.ended = True
        elif frame.startswith(b"data: [DONE]"):
            self.done = True
            return []
        elif frame.startswith(b"event: "):  # already the client's (a native answer, ``Job.native``)
            self.raw = seq
            out = frame
        else:
            self.raw = seq
            envelope = _kept_error(frame)
            if envelope is not None:
                out = self.stream.error(500, envelope)
                self.ended = True
            else:
                out = self.stream.frames(Event("", 0, 0, "data", frame))
        events = []
        for event in split_events(out):
            self.seq += 1
            events.append((self.seq, event))
        return events


def _kept_error(frame: bytes) -> bytes | None:
    """The error envelope of a kept chat error event (``workers/keeper.py``'s ``chat_error``), else None."""
    if not frame.startswith(b"data: {") or b'"choices"' in frame:
        return None  # a chunk (every one has ``choices``), or ``[DONE]``
    envelope = frame[6:].strip()
    try:
        decoded = msgspec.json.decode(envelope)
    except msgspec.DecodeError:
        return None
    return envelope if isinstance(decoded, dict) and "error" in decoded and "choices" not in decoded else None


async def rebuilt(log_: EventLog, request_id: str, after: int, deadline: float, stream: Any,
                  keepalive: bytes = b": keep-alive\n\n") -> AsyncIterator[bytes]:
    """``replay`` for an answer whose worker keeps chat frames and whose client reads another format: its
    client events after ``after``, rebuilt (``Rebuilder``) from the first kept one, live until its end."""
    rebuilder = Rebuilder(stream)
    while time.time() < deadline and not rebuilder.ended:
        entries = await log_.read(request_id, rebuilder.raw)
        if entries is None:
            return
        if not entries:
            yield keepalive
            continue
        for seq, kind, frame in entries:
            for number, event in rebuilder.feed(seq, kind, frame):
                if number > after:
                    yield event if event.startswith(b"id: ") else b"id: " + str(number).encode() + b"\n" + event
            if rebuilder.ended:
                return


async def rebuilt_final(log_: EventLog, request_id: str, stream: Any) -> bool:
    """Feed every kept event to ``stream`` (its owner then holds the final Response object): True when
    the answer's end is kept (its worker's final event, or its follower's failure)."""
    rebuilder = Rebuilder(stream)
    entries = await log_.redis.xrange(log_.names.answer_events(request_id))
    for entry_id, fields in entries:
        last = int(entry_id.split(b"-")[1]) - 1
        kind, blob = next(iter(fields.items()))
        frames = split_events(blob) if kind == BATCH else [b""]
        for n, frame in enumerate(frames):
            rebuilder.feed(last - len(frames) + 1 + n, kind, frame)
    return rebuilder.ended and (rebuilder.done or rebuilder.stream.owner.final is not None)


def _error_event(seq: int, code: str, message: str) -> bytes:
    """An in-band error ending a replayed stream (the Responses API's error event, with the ``error`` object
    the other SDKs read)."""
    return b"id: " + str(seq).encode() + b"\nevent: error\ndata: " + msgspec.json.encode({
        "type": "error", "code": code, "message": message, "param": None, "sequence_number": seq,
        "error": {"type": code, "message": message}}) + b"\n\n"


async def cancel(redises: list[Redis], channel: str, request_id: str) -> None:
    """Ask the web process following a background answer (its reply ``channel``) to stop it."""
    event = event_encoder.encode(Event(request_id, 0, 0, "cancel"))
    for redis in redises:
        await redis.publish(channel, event)


async def followed(redises: list[Redis], channel: str) -> bool:
    """Whether the web process with reply ``channel`` is still there (subscribed): it follows its answers."""
    for redis in redises:
        for _, count in await redis.pubsub_numsub(channel):
            if int(count) > 0:
                return True
    return False


Encode = Callable[[Event], bytes]
Fail = Callable[[int, bytes], bytes]


async def follow(exchange: Exchange, writer: EventWriter, encode: Encode, fail: Fail,
                 on_start: Callable[[], Awaitable[None]], on_cancel: Callable[[], Awaitable[None]]) -> None:
    """Follow one background answer to its end, keeping its client events (``encode``: a data or done
    event's SSE events; ``fail``: the in-band failure's). The exchange's ``keep`` stores the final
    Response object before the last event is kept, so a reader that saw the end finds it stored."""
    started = False
    keepalive = exchange.gateway.settings.keepalive_interval
    try:
        while True:
            try:
                event = await exchange.next_event(keepalive)
            except GatewayError as error:
                exchange.record(error.status)
                frames = fail(error.status, error.body())
                await exchange.kept()
                await writer.add(frames)
                return
            if event is None:
                continue
            if event.kind == "cancel":
                if await exchange.cancel():
                    await on_cancel()
                    return
                continue  # it settled first: its answer is on the way
            if not started:
                started = True
                await on_start()
            if event.kind == "error":
                exchange.record(event.status)
                frames = fail(event.status, event.data)
                await exchange.kept()
                await _keep(writer, event, frames)
                return
            frames = encode(event)
            exchange.sent()  # kept for readers: the request is never re-run from here on
            if event.kind == "done":
                exchange.record(200, event.usage)
                await exchange.kept()
                await _keep(writer, event, frames)
                return
            await _keep(writer, event, frames)
    except asyncio.CancelledError:
        if exchange.job is not None and exchange.job.keep is not None and not writer.ended:
            log.info("request %s: left to its worker, which keeps its events (the web process is stopping)",
                     exchange.request_id)
            writer.ended = True
            exchange.let_go()
            raise
        log.warning("request %s: background answer interrupted (the web process is stopping)", exchange.request_id)
        await asyncio.shield(_interrupted(exchange, writer, fail))
        raise
    except Exception as exc:
        log.warning("request %s: background answer lost (%s)", exchange.request_id, type(exc).__name__)
        await _interrupted(exchange, writer, fail)
    finally:
        try:
            await asyncio.shield(writer.end())
        except Exception as exc:
            log.info("request %s: events not closed (%s)", exchange.request_id, type(exc).__name__)
        await exchange.finish()


async def _keep(writer: EventWriter, event: Event, frames: bytes) -> None:
    """Keep a worker event's client events, unless its worker kept them already (``workers/keeper.py``)."""
    if event.kept:
        writer.skip(frames, final=event.kind in ("done", "error"))
    else:
        await writer.add(frames)


async def _interrupted(exchange: Exchange, writer: EventWriter, fail: Fail) -> None:
    try:
        error = GatewayError("temporarily_unavailable", "The gateway stopped following this answer.")
        frames = fail(error.status, error.body())
        await exchange.kept()
        await writer.add(frames)
    except Exception:
        pass


def start(tasks: set[asyncio.Task[Any]], coro: Awaitable[None], name: str) -> None:
    """Run ``coro`` on its own, held in ``tasks`` until it ends (the gateway stops what is left)."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
