"""A resumable chat stream's worker keeps its events (workers/keeper.py) on a real Redis: with nobody
subscribed it runs on and is billed (its client reads the kept events through any web process); the final
event and the end marker are written by the settlement that bills it; a superseded attempt keeps nothing."""

from __future__ import annotations

from arq.connections import ArqRedis

from common.names import Names
from common.settlement import REFUSED, SETTLED, supersede
from common.wire import KeepEvents
from tests.test_settlement_script import bill, hold, ledger, unbilled
from workers.publisher import Publisher

KEEP = KeepEvents(ttl=3600, live_ttl=4200, max_bytes=1 << 20)


def chunk(text: str) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"' + text.encode() + b'"}}]}\n\n'


async def entries(redis: ArqRedis, names: Names, request_id: str) -> list[tuple[bytes, bytes, bytes]]:
    return [(entry_id, *next(iter(fields.items())))
            for entry_id, fields in await redis.xrange(names.answer_events(request_id))]


async def test_a_kept_answer_runs_on_unheard_and_is_billed_once(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names)
    pub = Publisher(redis, "nobody-listens", "r1", 0, settler=redis, names=names, keep=KEEP)
    await pub.send("data", chunk("Hel") + b": keep-alive\n\n" + chunk("lo"))  # no ReceiverGone: it is kept
    await pub.send("heartbeat")
    result = await pub.finish("done", b"data: [DONE]\n\n", bill())
    assert result.status == SETTLED and result.receivers == 0
    requests, _, held, holds = await ledger(redis, names)
    assert (requests, held, holds) == (1, 0, 0)  # billed once, its hold returned
    assert await unbilled(redis, names, "unreceived") == 0  # kept means received
    assert await entries(redis, names, "r1") == [
        (b"0-2", b"f", chunk("Hel") + chunk("lo")), (b"0-3", b"f", b"data: [DONE]\n\n"), (b"0-4", b"end", b"")]
    assert 3500 < await redis.ttl(names.answer_events("r1")) <= 3600


async def test_a_superseded_attempt_keeps_nothing(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names, "r2")
    stale = Publisher(redis, "nobody-listens", "r2", 0, settler=redis, names=names, keep=KEEP)
    assert await supersede(redis, names, "r2", 1, bill().deadline)  # the web tier re-ran the request
    await stale.send("data", chunk("old"))
    assert (await stale.finish("done", b"data: [DONE]\n\n", bill(request_id="r2"))).status == REFUSED
    assert await entries(redis, names, "r2") == []
    current = Publisher(redis, "nobody-listens", "r2", 1, settler=redis, names=names, keep=KEEP)
    await current.send("data", chunk("new"))
    assert (await current.finish("done", b"data: [DONE]\n\n", bill(1, "r2"))).status == SETTLED
    assert [kind for _, kind, _ in await entries(redis, names, "r2")] == [b"f", b"f", b"end"]
