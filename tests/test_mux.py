"""The shared hot-path connection (common/mux.py) and the callback subscription (common/subscription.py),
against the real Redis, and against silent TCP servers for the timeouts."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError, ResponseError

from common.mux import Mux, Script, mux_of, open_streams
from common.redis import connect
from common.subscription import subscribe
from tests.harness import wait_for_async


@pytest.fixture
def prefix() -> str:
    return f"test-mux-{uuid.uuid4().hex[:10]}:"


async def test_streams_are_redis_pys_own(redis) -> None:
    """The one private detail we rely on: redis-py's connection keeps its streams as _reader/_writer."""
    connection, reader, writer = await open_streams(redis.connection_pool)
    assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
    await connection.disconnect()


async def test_concurrent_callers_get_their_own_replies(redis, prefix: str) -> None:
    mux = mux_of(redis)

    async def one(i: int) -> tuple[int, bytes | None]:
        await mux.execute("SET", f"{prefix}{i}", str(i))
        return await mux.execute("INCRBY", f"{prefix}n", 1), await mux.execute("GET", f"{prefix}{i}")

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert [value for _, value in results] == [str(i).encode() for i in range(300)]
    assert sorted(count for count, _ in results) == list(range(1, 301))
    await redis.delete(*[f"{prefix}{i}" for i in range(300)], f"{prefix}n")


async def test_an_error_reply_fails_only_its_command(redis, prefix: str) -> None:
    mux = mux_of(redis)
    await mux.execute("SET", f"{prefix}s", "text")
    ok, bad, after = await asyncio.gather(mux.execute("GET", f"{prefix}s"), mux.execute("INCR", f"{prefix}s"),
                                          mux.execute("PING"), return_exceptions=True)
    assert ok == b"text" and after == b"PONG"
    assert isinstance(bad, ResponseError) and "not an integer" in str(bad)
    with pytest.raises(ResponseError):
        await mux.pipeline([("SET", f"{prefix}t", 1), ("INCR", f"{prefix}s")])
    assert await redis.get(f"{prefix}t") == b"1"  # not a transaction: the first command ran
    assert await mux.pipeline([("INCR", f"{prefix}t"), ("GET", f"{prefix}t")]) == [2, b"2"]
    await redis.delete(f"{prefix}s", f"{prefix}t")


async def test_a_script_unknown_to_redis_is_loaded_once(redis, prefix: str) -> None:
    script = Script(f"return '{prefix}' .. ARGV[1]  -- {uuid.uuid4().hex}")
    assert not (await redis.script_exists(script.sha))[0]
    assert await mux_of(redis).evalsha(script, [], ["x"]) == f"{prefix}x".encode()
    assert (await redis.script_exists(script.sha))[0]


async def test_a_killed_connection_fails_waiters_and_the_next_command_reconnects(redis_url: str) -> None:
    client = connect(redis_url)
    mux = mux_of(client)
    assert await mux.execute("CLIENT", "SETNAME", "mux-under-test") == b"OK"
    nothing = f"nothing-{uuid.uuid4().hex}"
    blocked = asyncio.ensure_future(mux.execute("BLPOP", nothing, 5))  # holds the line
    killer = connect(redis_url)

    async def blocked_victim() -> dict | None:
        """The mux's connection, once Redis shows it blocked in that BLPOP."""
        for entry in await killer.client_list():
            if entry.get("name") == "mux-under-test" and entry.get("cmd") in ("blpop", "BLPOP"):
                return entry
        return None

    victim = await wait_for_async(blocked_victim, 5)
    assert victim is not None
    await killer.client_kill_filter(_id=victim["id"])
    with pytest.raises(ConnectionError):
        await blocked
    assert await mux.execute("PING") == b"PONG"  # a fresh connection
    await killer.aclose()
    await client.aclose()


async def _silent_server() -> tuple[asyncio.AbstractServer, int, list[bytes], asyncio.Event]:
    """A TCP server that answers redis-py's connection handshake (a PING, two CLIENT SETINFO) and then
    nothing at all; ``closed`` is set when a client hangs up on it."""
    received: list[bytes] = []
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while data := await reader.read(65536):
            received.append(data)
            if answered < 3:
                replies = [b"+PONG\r\n"] * (answered == 0 and b"PING" in data) + [b"+OK\r\n"] * data.count(b"SETINFO")
                writer.write(b"".join(replies))
                answered += len(replies)
        closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received, closed


async def test_no_reply_within_the_timeout_drops_the_connection() -> None:
    server, port, received, closed = await _silent_server()
    client = connect(f"redis://127.0.0.1:{port}/0")
    mux = Mux(client, reply_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionError, match="no reply"):
        await asyncio.wait_for(mux.execute("GET", "k"), 30)  # a bound on waiting, not an assertion of speed
    assert loop.time() - started >= 0.25  # it waited out its 0.3 s timeout (a lower bound: load cannot break it)
    assert b"GET" in b"".join(received)
    await asyncio.wait_for(closed.wait(), 10)  # and the silent connection was dropped
    server.close()


async def test_subscription_delivers_in_order_after_confirming(redis, redis_url: str) -> None:
    channel = f"test-sub-{uuid.uuid4().hex}"
    got: list[bytes] = []
    confirmed = asyncio.Event()
    task = asyncio.create_task(subscribe(connect(redis_url, pubsub=True), [channel],
                                         lambda ch, data: got.append(data), confirmed.set))
    await asyncio.wait_for(confirmed.wait(), 5)
    for i in range(200):
        await mux_of(redis).execute("PUBLISH", channel, str(i))
    assert await wait_for_async(lambda: len(got) == 200, 10)
    assert got == [str(i).encode() for i in range(200)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_silent_subscription_is_given_up() -> None:
    """No confirmation, no PONG: after twice the ping interval, subscribe raises and the caller resubscribes."""
    server, port, received, _ = await _silent_server()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionError, match="no reply"):
        await asyncio.wait_for(subscribe(connect(f"redis://127.0.0.1:{port}/0", pubsub=True), ["c"],
                                         lambda *_: None, lambda: None, ping_every=0.2), 30)
    assert loop.time() - started >= 0.35  # about twice the ping interval (a lower bound: load cannot break it)
    sent = b"".join(received)
    assert b"SUBSCRIBE" in sent and sent.count(b"PING") >= 2  # the handshake's, and the idle check's
    server.close()
