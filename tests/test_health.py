"""Provider health: the trip rules (pure), the Redis bookkeeping workers do, and the snapshot the router reads.

The numbers are README's ("Providers"), written out here rather than read from the code's constants, so a
change to them fails until README changes too: a circuit opens at 5 failures that are at least 50 % of the
calls over the last minute, and stays open for 30 s before one trial request.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from api.provider_health import load_snapshot
from common.names import Names
from common.redis import connect
from router.health import (
    Counts,
    HealthSnapshot,
    build_snapshot,
    counts_as_failure,
    decide,
    should_open,
    sum_buckets,
)
from workers.health import record_outcome

T0 = 1_700_000_000.0  # a boundary of the health buckets (ten seconds each)
MIN_FAILURES = 5  # README: "5 failures …"
COOLDOWN_SECONDS = 30  # README: "… 30 s cool-down, then one trial request"


# ---------------------------------------------------------------- pure rules


@pytest.mark.parametrize("status", [0, 408, 429, 500, 502, 503, 504, 529])
def test_provider_trouble_counts(status: int) -> None:
    assert counts_as_failure(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_do_not_count(status: int) -> None:
    assert not counts_as_failure(status)


def test_trip_needs_five_failures_and_half_of_the_calls() -> None:
    assert not should_open(4, 4)
    assert should_open(5, 5)
    assert should_open(5, 10)  # 50 % exactly
    assert not should_open(5, 11)
    assert should_open(6, 12) and not should_open(6, 13)


def test_circuit_state_machine() -> None:
    many = Counts(ok=1, fail=MIN_FAILURES)
    assert decide(None, True, many, T0).action == "open"
    assert decide(None, True, many, T0).until == T0 + COOLDOWN_SECONDS
    assert decide(None, False, many, T0).action == ""  # a success never opens
    assert decide(None, True, Counts(fail=1), T0).action == ""
    until = T0 + COOLDOWN_SECONDS
    assert decide(until, True, many, T0 + 1).action == ""  # open: in-flight outcomes change nothing
    assert decide(until, False, many, T0 + 1).action == ""
    assert decide(until, False, many, until).action == "close"  # half-open trial succeeded
    reopened = decide(until, True, Counts(fail=1), until + 1)
    assert reopened.action == "reopen" and reopened.until == until + 1 + COOLDOWN_SECONDS


def test_snapshot_reads_counts_and_circuits() -> None:
    counts = sum_buckets("openai", [{"ok": 3, "fail": 1, "ms": 3000, "ok|openai/gpt-4o": 1, "fail|openai/gpt-4o": 3,
                                     "ms|openai/gpt-4o": 500}, {"ok": 1, "ms": 1000, "junk": 9}])
    snap = build_snapshot({"openai": {"*": T0 + 5}, "anthropic": {"anthropic/claude-x": T0 - 1}},
                          {"openai": counts}, T0)
    assert snap.open_circuits == frozenset({"openai"})
    assert snap.half_open == frozenset({"anthropic|anthropic/claude-x"})
    assert snap.error_rate("openai", "openai/gpt-4o") == 0.75
    assert snap.error_rate("openai", "openai/other") == 0.2  # falls back to the provider's own rate
    assert snap.latency("openai", "openai/other") == 1.0
    assert snap.score("openai", "openai/other") == 1.0
    assert snap.state("openai") == "open" and snap.state("groq") == "closed"
    assert snap.error_rate("groq", "groq/x") is None and snap.score("groq", "groq/x") is None


def test_half_open_grants_one_trial_per_snapshot() -> None:
    snap = HealthSnapshot(half_open=frozenset({"anthropic"}))
    assert snap.healthy("anthropic", "anthropic/a")
    assert not snap.healthy("anthropic", "anthropic/b")
    assert snap.healthy("google", "google/g")
    assert not HealthSnapshot(open_circuits=frozenset({"openai|openai/m"})).healthy("openai", "openai/m")
    assert HealthSnapshot(open_circuits=frozenset({"openai|openai/m"})).healthy("openai", "openai/n")


# ---------------------------------------------------------------- through Redis


@pytest.fixture
def names() -> Names:
    return Names(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def redis(redis_url: str, names: Names) -> AsyncIterator[object]:
    """The suite's Redis; the test's own keys are removed afterwards (circuits live for a day otherwise)."""
    client = connect(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{names.ns}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _fail(redis: object, names: Names, n: int, now: float, status: int = 503,
                model: str = "openai/gpt-4o-mini") -> list:
    changes = []
    for i in range(n):
        changes += await record_outcome(redis, names, "openai", model, False, 0.1, status, now=now + i * 0.01)
    return changes


async def test_failures_open_the_circuit_then_a_trial_closes_it(redis: object, names: Names) -> None:
    await record_outcome(redis, names, "openai", "openai/gpt-4o-mini", True, 0.5, 200, now=T0)
    assert await _fail(redis, names, MIN_FAILURES - 1, T0 + 1) == []
    changes = await _fail(redis, names, 1, T0 + 2)
    assert sorted(m or "*" for m, c in changes if c.action == "open") == ["*", "openai/gpt-4o-mini"]
    snap = await load_snapshot(redis, names, ["openai", "anthropic"], now=T0 + 3)
    assert not snap.healthy("openai", "openai/gpt-4o")
    assert snap.healthy("anthropic", "anthropic/x")
    assert snap.error_rate("openai", "openai/gpt-4o-mini") == MIN_FAILURES / (MIN_FAILURES + 1)
    assert snap.latency("openai", "openai/gpt-4o-mini") == 0.5
    # cool-down over: half-open; one success closes both circuits and forgets the old failures
    later = T0 + 2 + COOLDOWN_SECONDS + 1
    assert (await load_snapshot(redis, names, ["openai"], now=later)).state("openai") == "half_open"
    changes = await record_outcome(redis, names, "openai", "openai/gpt-4o-mini", True, 0.2, 200, now=later)
    assert {c.action for _, c in changes} == {"close"}
    snap = await load_snapshot(redis, names, ["openai"], now=later + 1)
    assert snap.state("openai") == "closed" and snap.healthy("openai", "openai/gpt-4o-mini")
    assert await _fail(redis, names, 1, later + 2) == []  # the window was forgotten: one failure is not enough


async def test_a_failed_trial_reopens(redis: object, names: Names) -> None:
    await _fail(redis, names, MIN_FAILURES, T0)
    later = T0 + COOLDOWN_SECONDS + 1
    changes = await _fail(redis, names, 1, later, status=0)
    assert {c.action for _, c in changes} == {"reopen"}
    snap = await load_snapshot(redis, names, ["openai"], now=later + 1)
    assert snap.state("openai") == "open"


async def test_client_errors_and_mixed_traffic_keep_it_closed(redis: object, names: Names) -> None:
    assert await _fail(redis, names, 2 * MIN_FAILURES, T0, status=400) == []
    for i in range(MIN_FAILURES + 1):
        await record_outcome(redis, names, "openai", "openai/gpt-4o-mini", True, 0.1, 200, now=T0 + 1)
    assert await _fail(redis, names, MIN_FAILURES, T0 + 2) == []  # 5 of 21 calls failed: under 50 %
    snap = await load_snapshot(redis, names, ["openai"], now=T0 + 3)
    assert snap.open_circuits == frozenset()
    assert 0 < snap.error_rate("openai", "openai/gpt-4o-mini") < 0.5


async def test_one_bad_model_does_not_close_its_provider(redis: object, names: Names) -> None:
    for _ in range(3 * MIN_FAILURES):
        await record_outcome(redis, names, "openai", "openai/good", True, 0.1, 200, now=T0)
    changes = await _fail(redis, names, MIN_FAILURES, T0 + 1, model="openai/bad")
    assert [(m, c.action) for m, c in changes] == [("openai/bad", "open")]
    snap = await load_snapshot(redis, names, ["openai"], now=T0 + 2)
    assert not snap.healthy("openai", "openai/bad") and snap.healthy("openai", "openai/good")


async def test_old_failures_leave_the_window(redis: object, names: Names) -> None:
    """"Over the last minute": failures 60 s old no longer count; 50 s old they still do."""
    await _fail(redis, names, MIN_FAILURES - 1, T0)
    assert await _fail(redis, names, 1, T0 + 60) == []
    other = Names(names.ns + "-b")
    try:
        await _fail(redis, other, MIN_FAILURES - 1, T0)
        assert [c.action for _, c in await _fail(redis, other, 1, T0 + 50)] == ["open", "open"]
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{other.ns}:*")]  # type: ignore[attr-defined]
        if keys:
            await redis.delete(*keys)  # type: ignore[attr-defined]


async def test_the_cool_down_is_thirty_seconds(redis: object, names: Names) -> None:
    await _fail(redis, names, MIN_FAILURES, T0)
    opened = T0 + (MIN_FAILURES - 1) * 0.01  # the fifth failure's time (_fail spaces them 10 ms apart)
    assert (await load_snapshot(redis, names, ["openai"], now=opened + 29.9)).state("openai") == "open"
    assert (await load_snapshot(redis, names, ["openai"], now=opened + 30)).state("openai") == "half_open"
