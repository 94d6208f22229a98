"""A Redis pub/sub subscription whose messages go straight to a callback as they are parsed.

Each web process reads every event of its requests through one of these (``api/exchange/relay.py``), and each
worker process its wake-ups and cancels (``workers/pool.py``). redis-py's ``PubSub`` hands messages out
through an async iterator with a timeout and a dict per message: ~20 µs of CPU each, for the most frequent
message of the system. Here a read of the socket is parsed in C (hiredis) and every complete message is
passed to ``on_message(channel, data)`` at once, many per read under load.

The connection is made by redis-py (the client's pool: TLS, AUTH, a Sentinel's master), like
``common/mux.py``'s. An idle subscription sends a PING every ``ping_every`` seconds; if nothing at all
arrives for twice that, the connection is presumed dead and ``run`` raises, so the caller resubscribes
(pub/sub delivers at most once: callers treat a lost subscription as lost events).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from common.mux import ReplyReader, close_streams, open_streams

PING_EVERY = 15.0  # seconds of silence before a PING (redis-py's health_check_interval for our clients)

OnMessage = Callable[[bytes, bytes], None]  # (channel, data)


async def subscribe(client: Redis, channels: Sequence[str | bytes], on_message: OnMessage,
                    on_subscribed: Callable[[], None], *, ping_every: float = PING_EVERY) -> None:
    """Subscribe to ``channels`` and deliver their messages until the connection fails (raises
    ``ConnectionError``) or the task is cancelled. ``on_subscribed`` runs once every channel is confirmed:
    from then on nothing published to them is missed."""
    connection, reader, writer = await open_streams(client.connection_pool)
    loop = asyncio.get_running_loop()
    last_read = loop.time()
    watchdog: asyncio.TimerHandle | None = None
    failed: list[str] = []

    def watch() -> None:
        nonlocal watchdog
        idle = loop.time() - last_read
        if idle >= 2 * ping_every:
            failed.append(f"no reply from Redis for {idle:.0f} s")
            writer.transport.abort()  # the pending read ends, and run raises below
            return
        if idle >= ping_every:
            writer.write(hiredis.pack_command(("PING",)))
        watchdog = loop.call_later(ping_every, watch)

    replies = ReplyReader(reader)
    unconfirmed = {c.encode() if isinstance(c, str) else c for c in channels}
    try:
        writer.write(hiredis.pack_command(("SUBSCRIBE", *channels)))
        watchdog = loop.call_later(ping_every, watch)
        while True:
            try:
                batch = await replies.read()
            except ConnectionError:
                raise ConnectionError(failed[0] if failed else "Redis closed the subscription") from None
            last_read = loop.time()
            for reply in batch:
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"subscription refused: {reply}")
                kind = reply[0]
                if kind == b"message":
                    on_message(reply[1], reply[2])
                elif kind == b"subscribe" and unconfirmed:
                    unconfirmed.discard(reply[1])
                    if not unconfirmed:
                        on_subscribed()
    except OSError as exc:
        raise ConnectionError(str(exc)) from exc
    finally:
        if watchdog is not None:
            watchdog.cancel()
        close_streams(connection)
