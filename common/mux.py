"""One shared Redis connection per process for the hot path's short commands, pipelined on its own.

Why not redis-py's pool for these: it gives every concurrent command a connection of its own and spends
35–60 µs of CPU per command (a pool lock, a zero-timeout "is anything unread?" check, RESP packing in
Python, one write and one read per command). Here every command issued in one event-loop turn goes out
in one write, replies are parsed in C (hiredis) as they arrive and handed to their callers in order: Redis
answers one connection's commands in the order sent, so the n-th reply belongs to the n-th command. That
order is also what the callers rely on (``common/queue.py`` writes a payload before its queue entry).

The connection itself is made by redis-py (the client's pool: URL, TLS, AUTH, SELECT, a Sentinel's current
master), so every URL form works here exactly as it does elsewhere; we only take its two streams.

Only for commands that answer at once: never a blocking command or SUBSCRIBE (they would hold up every
command behind them). A reply that does not come within ``reply_timeout`` drops the connection, which
fails every command waiting on it with ``ConnectionError``; the next command connects again.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, NoScriptError, ReadOnlyError, ResponseError

REPLY_TIMEOUT = 10.0  # seconds; redis-py's socket_timeout for our clients (common/redis.py)
READ_SIZE = 65536
_INCOMPLETE = object()  # hiredis: no complete reply in the buffer yet

Command = Sequence[Any]  # ("SET", key, value, ...): str, bytes, int or float arguments


class _Waiter:
    """The callers' side of ``count`` consecutive replies (one command, or a pipeline's commands)."""

    __slots__ = ("future", "count", "replies", "sent_at")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent_at: float) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []
        self.sent_at = sent_at


class Mux:
    """The multiplexed connection of one redis-py client (see ``mux_of``)."""

    def __init__(self, client: Redis, *, reply_timeout: float = REPLY_TIMEOUT) -> None:
        self._pool = client.connection_pool
        self.reply_timeout = reply_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: Any = None  # redis-py's Connection, kept so its streams stay ours
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: deque[_Waiter] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *command: Any) -> Any:
        """One command's reply; a Redis error reply raises ``ResponseError``."""
        replies = await self._send((hiredis.pack_command(command),), 1)
        reply = replies[0]
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
        return reply

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one go (not a transaction); raises the first error reply, like redis-py."""
        replies = await self._send([hiredis.pack_command(tuple(c)) for c in commands], len(commands))
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise _error(reply)
        return replies

    async def evalsha(self, script: "Script", keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a Lua script by its digest; loads it once if this Redis does not know it yet."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.execute(*command)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script.source)
            return await self.execute(*command)

    async def _send(self, packed: Sequence[bytes], count: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._loop is not loop:
            await self._connect(loop)
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append(_Waiter(future, count, loop.time()))
        self._out.extend(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        if self._writer is None:
            return  # the connection failed meanwhile; its waiters were failed with it
        self._writer.write(data)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self.reply_timeout, self._check_replies)  # type: ignore[union-attr]

    def _check_replies(self) -> None:
        """The oldest command has waited ``reply_timeout``: the connection is presumed dead."""
        self._watchdog = None
        if not self._waiting:
            return
        assert self._loop is not None
        waited = self._loop.time() - self._waiting[0].sent_at
        if waited >= self.reply_timeout:
            self._drop(ConnectionError(f"no reply from Redis within {self.reply_timeout:g} s"))
        else:
            self._watchdog = self._loop.call_later(self.reply_timeout - waited, self._check_replies)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:  # first use, or a new event loop (tests): start afresh
            self._drop(ConnectionError("event loop changed"))
            self._loop, self._connecting = loop, asyncio.Lock()
        assert self._connecting is not None
        async with self._connecting:
            if self._writer is not None:
                return
            connection, reader, writer = await open_streams(self._pool)
            self._connection, self._writer = connection, writer
            self._reader_task = loop.create_task(self._read(reader), name="redis-mux-reader")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        replies = ReplyReader(reader)
        waiting = self._waiting  # this connection's (``_drop`` gives the next one a new deque)
        try:
            while True:
                for reply in await replies.read():
                    if not waiting:
                        raise ConnectionError("a reply nobody asked for")
                    waiter = waiting[0]
                    waiter.replies.append(reply)
                    if len(waiter.replies) == waiter.count:
                        waiting.popleft()
                        if not waiter.future.done():  # its caller may have been cancelled
                            waiter.future.set_result(waiter.replies)
                    if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):
                        raise ConnectionError("Redis is a replica now (failover): reconnecting")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._drop(exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc)))

    def _drop(self, error: Exception) -> None:
        """Forget the connection and fail every command waiting on it (also when its event loop is gone
        already: a test's loop, or a process shutting down)."""
        self._writer = None
        task, self._reader_task = self._reader_task, None
        connection, self._connection = self._connection, None
        watchdog, self._watchdog = self._watchdog, None
        waiting, self._waiting = self._waiting, deque()
        self._out.clear()
        try:
            if watchdog is not None:
                watchdog.cancel()
            if task is not None and task is not _current_task():
                task.cancel()
            if connection is not None:
                close_streams(connection)
            for waiter in waiting:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
        except RuntimeError:  # "Event loop is closed": nobody is left to tell
            pass

    async def aclose(self) -> None:
        self._drop(ConnectionError("closed"))


class ReplyReader:
    """The replies on a stream, parsed in C by hiredis: all those complete after each read of the socket."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = hiredis.Reader(notEnoughData=_INCOMPLETE)

    async def read(self) -> list[Any]:
        """The replies the next read completes (maybe none); ``ConnectionError`` when Redis hung up."""
        data = await self._reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("Redis closed the connection")
        self._parser.feed(data)
        replies = []
        while (reply := self._parser.gets()) is not _INCOMPLETE:
            replies.append(reply)
        return replies


class Script:
    """A Lua script known by its SHA1 digest, run through ``Mux.evalsha``."""

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    return ResponseError(message)


async def open_streams(pool: ConnectionPool) -> tuple[AbstractConnection, asyncio.StreamReader, asyncio.StreamWriter]:
    """A new connection of ``pool``, connected by redis-py (TLS, AUTH, SELECT, a Sentinel's master), and its
    two streams, which are ours from now on. redis-py keeps them as ``_reader``/``_writer`` (redis<6 is
    pinned; ``tests/test_mux.py`` breaks loudly if that changes)."""
    connection = pool.make_connection()
    await connection.connect()
    return connection, connection._reader, connection._writer


def close_streams(connection: AbstractConnection) -> None:
    """Close a connection taken with ``open_streams`` (no await: also from a failing reader's callback)."""
    writer = connection._writer
    connection._reader = connection._writer = None  # redis-py's own disconnect does the same
    if writer is not None:
        try:
            writer.close()
        except RuntimeError:  # its event loop is already closed
            pass


_muxes: "weakref.WeakKeyDictionary[Redis, Mux]" = weakref.WeakKeyDictionary()


def mux_of(client: Redis) -> Mux:
    """The client's multiplexed connection, made on first use (one per client, so one per Redis URL)."""
    mux = _muxes.get(client)
    if mux is None:
        mux = _muxes[client] = Mux(client)
    return mux


async def close_mux(client: Redis) -> None:
    mux = _muxes.pop(client, None)
    if mux is not None:
        await mux.aclose()
