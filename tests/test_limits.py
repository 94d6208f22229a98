"""The limit script: atomic check-and-count, nothing consumed on refusal, headers, fail-closed."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from api.access.limits import DAY, MINUTE, Counter, CounterState, Limiter, budget_error, decide, rate_limit_headers, usd
from common.names import Names
from common.redis import connect
from common.settlement import SETTLE_GRACE, SETTLED, Settlement, close, settle, settle_by_ms
from common.usage import held_key, holds_key, spend_key, utc_month

pytestmark = pytest.mark.usefixtures("clear_of_window_edge")


@pytest.fixture
def limiter(redis, names: Names) -> Limiter:  # type: ignore[no-untyped-def]
    return Limiter(redis, names)


async def test_minute_limit_counts_down_then_refuses(limiter: Limiter) -> None:
    counter = limiter.ip_minute("192.0.2.1", 3)
    remaining = []
    for _ in range(3):
        decision = await limiter.check([counter])
        assert decision.allowed and decision.error is None
        remaining.append(decision.headers["x-ratelimit-remaining"])
        assert decision.headers["x-ratelimit-limit"] == "3"
        assert 1 <= int(decision.headers["x-ratelimit-reset"]) <= MINUTE
    assert remaining == ["2", "1", "0"]
    refused = await limiter.check([counter])
    assert not refused.allowed and refused.error is not None
    assert (refused.error.status, refused.error.error_type) == (429, "rate_limit_exceeded")
    headers = refused.error.response_headers()
    assert 1 <= int(headers["retry-after"]) <= MINUTE
    assert headers["x-ratelimit-remaining"] == "0" and headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"


async def test_day_limit_is_promotion_limit_reached(limiter: Limiter) -> None:
    counter = limiter.ip_day("192.0.2.2", 1)
    assert (await limiter.check([counter])).allowed
    refused = await limiter.check([counter])
    assert refused.error is not None
    assert (refused.error.status, refused.error.error_type) == (401, "promotion_limit_reached")
    assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= DAY


async def test_key_rpm_limit(limiter: Limiter) -> None:
    counter = limiter.key_minute("abcd1234", 1)
    assert (await limiter.check([counter])).allowed
    refused = await limiter.check([counter])
    assert refused.error is not None and refused.error.error_type == "rate_limit_exceeded"
    assert "API key" in refused.error.message


async def test_refusal_consumes_no_other_counter(limiter: Limiter) -> None:
    tight = limiter.ip_minute("192.0.2.3", 1)
    loose = limiter.key_minute("k-loose", 5)
    assert (await limiter.check([tight, loose])).allowed
    for _ in range(4):
        refused = await limiter.check([tight, loose])
        assert refused.error is not None and refused.headers["x-ratelimit-limit"] == "1"
    alone = await limiter.check([loose])
    assert alone.headers["x-ratelimit-remaining"] == "3"  # 5 - the first request - this one


async def test_headers_report_the_tightest_counter(limiter: Limiter) -> None:
    day = limiter.ip_day("192.0.2.4", 50)
    minute = limiter.ip_minute("192.0.2.4", 2)
    decision = await limiter.check([day, minute])
    assert decision.headers["x-ratelimit-limit"] == "2"
    assert decision.headers["x-ratelimit-remaining"] == "1"


async def test_zero_limit_refuses(limiter: Limiter) -> None:
    assert not (await limiter.check([limiter.ip_day("192.0.2.5", 0)])).allowed


async def test_no_counters_is_allowed_without_headers(limiter: Limiter) -> None:
    decision = await limiter.check([])
    assert decision.allowed and decision.headers == {}


async def test_revoked_key_is_refused_before_counting(redis, names: Names, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    revoked, counter = names.key("revoked"), limiter.key_minute("kid", 5)
    assert (await limiter.check([counter], key_id="kid", revoked_key=revoked)).allowed
    await redis.sadd(revoked, "kid")
    decision = await limiter.check([counter], key_id="kid", revoked_key=revoked)
    assert decision.revoked and decision.error is not None
    assert decision.error.error_type == "authentication_required"
    await redis.srem(revoked, "kid")
    after = await limiter.check([counter], key_id="kid", revoked_key=revoked)
    assert after.headers["x-ratelimit-remaining"] == "3"  # the refused request was not counted


async def test_budget(redis, names: Names, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    spend = names.key("spend")
    assert (await limiter.check([], key_id="k", spend_key=spend, budget=1.0)).allowed
    await redis.incrbyfloat(spend, "0.999")
    assert (await limiter.check([], key_id="k", spend_key=spend, budget=1.0)).allowed
    await redis.incrbyfloat(spend, "0.001")
    refused = await limiter.check([], key_id="k", spend_key=spend, budget=1.0)
    assert refused.error is not None
    assert (refused.error.status, refused.error.error_type) == (402, "budget_exceeded")


def _budget(names: Names, budget: float = 1.0, until: float = 600.0) -> dict[str, object]:
    """Limiter.check's budget arguments for key ``k``, holds ending ``until`` seconds from now."""
    return {"key_id": "k", "spend_key": spend_key(names, "k", utc_month()), "held_key": held_key(names, "k"),
            "holds_key": holds_key(names, "k"), "budget": budget, "hold_until_ms": settle_by_ms(time.time() + until)}


async def _held(redis, names: Names) -> Decimal:  # type: ignore[no-untyped-def]
    return Decimal((await redis.get(held_key(names, "k")) or b"0").decode())


async def test_reservations_hold_the_budget_until_returned(redis, names: Names,  # type: ignore[no-untyped-def]
                                                          limiter: Limiter) -> None:
    kw = _budget(names)
    deadline = time.time() + 600
    for i in range(3):
        assert (await limiter.check([], reserve=Decimal("0.3"), hold_id=f"r{i}", **kw)).allowed
    refused = await limiter.check([], reserve=Decimal("0.3"), hold_id="r3", **kw)  # 0.9 held + 0.3 > 1.0
    assert refused.error is not None and refused.error.status == 402
    assert "$0.30 " in refused.error.message and "$1.00" in refused.error.message
    assert await _held(redis, names) == Decimal("0.9")  # refused: none held
    assert await redis.zcard(holds_key(names, "k")) == 3
    # r0 is answered: its real cost lands and its hold goes back, in its settlement
    assert (await settle(redis, names, Settlement(request_id="r0", attempt=0, key_id="k", model="m",
                                                   deadline=deadline, cost="0.1", reserved="0.3"))).status == SETTLED
    assert (await limiter.check([], reserve=Decimal("0.3"), hold_id="r4", **kw)).allowed  # 0.1 + 0.6 + 0.3 <= 1.0
    # r1 fails on the web tier: closing it returns its hold, once
    assert await close(redis, names, "r1", "k", "0.3", deadline)
    assert await close(redis, names, "r1", "k", "0.3", deadline)
    assert await _held(redis, names) == Decimal("0.6")
    for request_id in ("r2", "r4"):
        await close(redis, names, request_id, "k", "0.3", deadline)
    assert await redis.get(held_key(names, "k")) is None  # no hold left: no total to drift
    assert await redis.zcard(holds_key(names, "k")) == 0


async def test_a_lost_hold_ends_at_its_own_deadline_whatever_the_traffic(redis, names: Names,  # type: ignore[no-untyped-def]
                                                                         limiter: Limiter) -> None:
    """A hold nobody returns (its worker and web process both lost) ends at its deadline: steady admissions
    of the same key, each holding and returning its own reservation, do not extend it."""
    lost = _budget(names, until=0.3 - SETTLE_GRACE)  # this hold's deadline is 0.3 s away
    assert (await limiter.check([], reserve=Decimal("0.5"), hold_id="lost", **lost)).allowed
    steady = _budget(names)
    n = 0
    while await redis.zscore(holds_key(names, "k"), "lost|0.5") is not None:
        n += 1
        assert n < 200, "the lost hold outlived its deadline"
        assert (await limiter.check([], reserve=Decimal("0.4"), hold_id=f"s{n}", **steady)).allowed
        await close(redis, names, f"s{n}", "k", "0.4", time.time() + 600)
        await asyncio.sleep(0.02)
    assert n >= 2  # traffic went on while the lost hold was due
    assert await _held(redis, names) == 0  # and nothing else is held


def test_money_is_shown_as_money() -> None:
    assert [usd(v) for v in (0.00001, 5, 0.16, Decimal("0.0001875"), 12.5)] == [
        "$0.00001", "$5.00", "$0.16", "$0.0001875", "$12.50"]
    assert budget_error(0.00001).message.startswith("This API key has used up its monthly budget of $0.00001.")


async def test_touch_records_last_use(redis, names: Names, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    used = names.key("used")
    await limiter.check([], key_id="k1", used_key=used, touch=False)
    assert await redis.hget(used, "k1") is None
    await limiter.check([], key_id="k1", used_key=used, touch=True)
    assert float(await redis.hget(used, "k1")) > 1.6e9


async def test_counter_keys_expire(redis, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    counter = limiter.ip_minute("192.0.2.6", 5)
    await limiter.check([counter])
    assert 0 < await redis.pttl(counter.key) <= (MINUTE + 1) * 1000


async def test_concurrent_requests_through_two_clients(redis, redis_url: str, names: Names) -> None:  # type: ignore[no-untyped-def]
    other = connect(redis_url)  # a second, independent client: as if a second API process
    try:
        limiters = [Limiter(redis, names), Limiter(other, names)]
        decisions = await asyncio.gather(
            *(limiters[i % 2].check([limiters[i % 2].ip_minute("198.51.100.1", 20)]) for i in range(50))
        )
    finally:
        await other.aclose()
    assert sum(d.allowed for d in decisions) == 20
    assert {d.error.status for d in decisions if d.error} == {429}


async def test_redis_down_fails_closed() -> None:
    dead = connect("redis://127.0.0.1:1")
    try:
        limiter = Limiter(dead, Names("test-dead"))
        decision = await limiter.check([limiter.ip_minute("192.0.2.7", 5)])
    finally:
        await dead.aclose()
    assert not decision.allowed and decision.error is not None
    assert (decision.error.status, decision.error.error_type) == (503, "temporarily_unavailable")
    assert "retry-after" in decision.error.response_headers()


def test_decide_maps_reply_to_headers() -> None:
    a = Counter("ip_day", "a", 50, DAY)
    b = Counter("ip_minute", "b", 20, MINUTE)
    decision = decide([a, b], [0, 0, 50, 40, 5_000_000, 20, 19, 1_500], None)
    assert decision.allowed
    assert decision.headers == {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "19", "x-ratelimit-reset": "2"}
    refused = decide([a, b], [3, 1, 50, 0, 5_000_000, 20, 19, 1_500], None)
    assert refused.error is not None and refused.error.error_type == "promotion_limit_reached"


def test_reset_header_is_never_zero() -> None:
    state = CounterState(Counter("ip_minute", "k", 1, MINUTE), 0, 0.0004)
    assert rate_limit_headers(state)["x-ratelimit-reset"] == "1"
