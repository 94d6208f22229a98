"""The settlement's rules, one by one, on a real Redis (common/settlement.py): once, fenced, never negative."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal

from arq.connections import ArqRedis

from common.names import Names
from common.redis import connect
from common.settlement import REFUSED, REPEAT, SETTLED, Settlement, close, settle, supersede
from common.usage import (Generation, account_usage_key, generation_encoder, held_key, holds_key, spend_key,
                          unbilled_key, usage_key, utc_day, utc_month)

MODEL = "openai/gpt-4o-mini"


def bill(attempt: int = 0, request_id: str = "r1", **fields: object) -> Settlement:
    options: dict[str, object] = {"prompt_tokens": 10, "completion_tokens": 5, "cost": "0.25", "reserved": "1.5",
                                  "deadline": time.time() + 600, **fields}
    return Settlement(request_id=request_id, attempt=attempt, key_id="k", model=MODEL, **options)  # type: ignore[arg-type]


async def hold(redis: ArqRedis, names: Names, request_id: str = "r1", amount: str = "1.5") -> None:
    """What the admission script leaves behind: one hold and its total."""
    await redis.zadd(holds_key(names, "k"), {f"{request_id}|{amount}": time.time() * 1000 + 600_000})
    await redis.incrbyfloat(held_key(names, "k"), amount)


async def ledger(redis: ArqRedis, names: Names) -> tuple[int, Decimal, Decimal, int]:
    """(requests billed, spend, held total, holds) of key ``k``."""
    requests = int(await redis.hget(usage_key(names, "k", utc_day()), f"{MODEL}|requests") or 0)
    spend = Decimal((await redis.get(spend_key(names, "k", utc_month())) or b"0").decode())
    held = Decimal((await redis.get(held_key(names, "k")) or b"0").decode())
    return requests, spend, held, await redis.zcard(holds_key(names, "k"))


async def unbilled(redis: ArqRedis, names: Names, reason: str, field: str = "requests") -> int:
    return int(await redis.hget(unbilled_key(names, utc_day()), f"{reason}|{MODEL}|{field}") or 0)


async def test_a_settlement_bills_once_however_often_it_runs(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names)
    record = generation_encoder.encode(Generation(id="chatcmpl-r1", key_id="k", model=MODEL, canonical=MODEL,
                                                  provider="openai", created=time.time(), cost="0.25"))
    first = await settle(redis, names, bill(generation=record, account="a1"))
    again = await settle(redis, names, bill(generation=record, account="a1"))  # a retry after a lost reply
    assert (first.status, again.status) == (SETTLED, REPEAT)
    assert await ledger(redis, names) == (1, Decimal("0.25"), Decimal(0), 0)
    assert await redis.hget(usage_key(names, "k", utc_day()), f"{MODEL}|completion_tokens") == b"5"
    account_day = await redis.hgetall(account_usage_key(names, "a1", utc_day()))  # the user's keys summed
    assert (account_day[f"{MODEL}|requests".encode()], account_day[f"{MODEL}|cost".encode()]) == (b"1", b"0.25")
    assert await redis.get(names.generation("r1")) == record
    assert 0 < await redis.ttl(usage_key(names, "k", utc_day()))


async def test_a_superseded_attempt_is_refused_and_counted(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names)
    deadline = time.time() + 600
    assert await supersede(redis, names, "r1", 1, deadline)  # the web tier re-runs the request
    late = await settle(redis, names, bill(attempt=0))
    assert (late.status, late.reason) == (REFUSED, "superseded")
    assert await ledger(redis, names) == (0, Decimal(0), Decimal("1.5"), 1)  # the hold is the new attempt's
    assert (await unbilled(redis, names, "superseded"), await unbilled(redis, names, "superseded", "completion_tokens")) == (1, 5)
    assert await redis.hget(unbilled_key(names, utc_day()), f"superseded|{MODEL}|cost") == b"0.25"  # what it cost us
    assert (await settle(redis, names, bill(attempt=1))).status == SETTLED
    assert await ledger(redis, names) == (1, Decimal("0.25"), Decimal(0), 0)
    # after the new attempt settled, the old one is still refused (and nothing re-runs a settled request)
    assert (await settle(redis, names, bill(attempt=0))).reason == "superseded"
    assert not await supersede(redis, names, "r1", 2, deadline)
    assert not await close(redis, names, "r1", "k", "1.5", deadline)
    assert await ledger(redis, names) == (1, Decimal("0.25"), Decimal(0), 0)


async def test_a_closed_request_bills_nothing_and_holds_nothing(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names)
    await hold(redis, names, "r2", "0.5")
    assert await close(redis, names, "r1", "k", "1.5", time.time() + 600)  # the web tier failed it
    assert await ledger(redis, names) == (0, Decimal(0), Decimal("0.5"), 1)
    refused = await settle(redis, names, bill())  # its worker comes back and finishes
    assert (refused.status, refused.reason) == (REFUSED, "closed")
    assert await ledger(redis, names) == (0, Decimal(0), Decimal("0.5"), 1)  # not returned twice: never negative
    assert await unbilled(redis, names, "closed") == 1


async def test_a_failed_request_returns_its_hold_and_counts_its_work(redis: ArqRedis, names: Names) -> None:
    await hold(redis, names)
    assert (await settle(redis, names, bill(outcome="failed", completion_tokens=2))).status == SETTLED
    assert await ledger(redis, names) == (0, Decimal(0), Decimal(0), 0)
    assert await unbilled(redis, names, "failed") == 1
    assert not await close(redis, names, "r1", "k", "1.5", time.time() + 600)  # settled already


async def test_a_settlement_after_the_deadline_is_refused(redis: ArqRedis, names: Names) -> None:
    refused = await settle(redis, names, bill(deadline=time.time() - 3600))  # its hold has ended long ago
    assert (refused.status, refused.reason) == (REFUSED, "late")
    assert await ledger(redis, names) == (0, Decimal(0), Decimal(0), 0)


async def test_the_answer_is_published_by_its_settlement(redis_url: str, redis: ArqRedis, names: Names) -> None:
    """Billed only when a web process got the answer; nobody listening (its web process died): unbilled."""
    channel = names.reply_channel("web")
    gone = await settle(redis, names, bill(request_id="r0"), channel=channel, event=b"answer")
    assert gone.status == SETTLED and gone.receivers == 0
    assert await ledger(redis, names) == (0, Decimal(0), Decimal(0), 0)
    assert await unbilled(redis, names, "unreceived") == 1

    listener = connect(redis_url)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(channel)
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
        await hold(redis, names)
        got = await settle(redis, names, bill(), channel=channel, event=b"answer")
        assert got.receivers == 1
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        assert message is not None and message["data"] == b"answer"
        assert await ledger(redis, names) == (1, Decimal("0.25"), Decimal(0), 0)
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_concurrent_settlements_and_closes_never_drive_the_total_below_zero(redis: ArqRedis,
                                                                                 names: Names) -> None:
    """Every request both settled and closed at once, in random order: each hold returns exactly once."""
    deadline = time.time() + 600
    for i in range(50):
        await hold(redis, names, f"q{i}", "0.1")
    jobs = [("settle", i) for i in range(50)] + [("close", i) for i in range(50)]
    random.Random(7).shuffle(jobs)
    results = await asyncio.gather(*(
        settle(redis, names, bill(request_id=f"q{i}", reserved="0.1", cost="0.01")) if what == "settle"
        else close(redis, names, f"q{i}", "k", "0.1", deadline) for what, i in jobs))
    outcomes = list(zip(jobs, results))
    settled = sum(1 for (what, _), r in outcomes if what == "settle" and r.status == SETTLED)
    closed = sum(1 for (what, _), r in outcomes if what == "close" and r)
    assert settled + closed == 50  # one of the two won each request
    requests, spend, held, holds = await ledger(redis, names)
    assert (requests, held, holds) == (settled, Decimal(0), 0)
    assert spend == Decimal("0.01") * settled
