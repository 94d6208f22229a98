"""Fairness between tenants (issue 22, item 6): bounds on requests in flight per API key, per account and
for all keyless requests together, taken by the admission script and returned by the request's one end.

Redis-level here (the script, its release by settlement and close, the bound a lost request's lease ends
on); the flood measured through real processes is in tests/test_fairness_flood.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis as sync_redis
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from api.access.limits import ACCOUNT_LEASE, ANONYMOUS_LEASE, KEY_LEASE, Lease, Limiter
from common.names import Names
from common.settings import Limits
from common.settlement import SETTLED, Settlement, close, settle, settle_by_ms
from common.queue import PRIORITY_HEAD_START_MS, enqueued_ms, job_write, write_job
from common.usage import account_inflight_key, inflight_key
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import EXPECTED, GatewayHarness, create_key, env_for, sdk_for, wait_until

pytestmark = pytest.mark.usefixtures("clear_of_window_edge")

LIMITS = Limits(key_concurrency=2, account_concurrency=3, anonymous_concurrency=2)


@pytest.fixture
def limiter(redis, names: Names) -> Limiter:  # type: ignore[no-untyped-def]
    return Limiter(redis, names)


def later() -> int:
    return settle_by_ms(time.time() + 30)


async def admit(limiter: Limiter, leases: list[Lease], request_id: str, *, until_ms: int | None = None,
                key_id: str | None = None):  # type: ignore[no-untyped-def]
    counters = [limiter.key_minute(key_id, 1000)] if key_id else []
    return await limiter.check(counters, key_id=key_id, leases=leases, lease_id=request_id,
                               hold_until_ms=later() if until_ms is None else until_ms)


async def members(redis, key: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(m.decode() for m in await redis.zrange(key, 0, -1))


def test_the_leases_a_request_joins(limiter: Limiter, names: Names) -> None:
    assert [(lease.kind, lease.limit) for lease in limiter.leases("k1", None, LIMITS)] == [(KEY_LEASE, 2)]
    assert [(lease.kind, lease.limit) for lease in limiter.leases("k1", "u1", LIMITS)] == [(KEY_LEASE, 2),
                                                                                         (ACCOUNT_LEASE, 3)]
    (anonymous,) = limiter.leases(None, None, LIMITS)
    assert (anonymous.kind, anonymous.limit, anonymous.key) == (ANONYMOUS_LEASE, 2, inflight_key(names, "anonymous"))


async def test_a_full_lease_refuses_429_with_retry_after_and_counts_nothing(redis, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    leases = limiter.leases("k2", None, LIMITS)
    assert (await admit(limiter, leases, "r1", key_id="k2")).allowed
    assert (await admit(limiter, leases, "r2", key_id="k2")).allowed
    refused = await admit(limiter, leases, "r3", key_id="k2")
    assert refused.error is not None
    assert (refused.error.status, refused.error.error_type) == (429, "rate_limit_exceeded")
    assert refused.error.response_headers()["retry-after"] == "1"
    assert "2 at once" in refused.error.message and "API key" in refused.error.message
    assert await members(redis, leases[0].key) == ["r1", "r2"]
    # the refused request counted against no rate window: the key's rpm shows two requests, not three
    decision = await limiter.check([limiter.key_minute("k2", 1000)])
    assert decision.headers["x-ratelimit-remaining"] == str(1000 - 3)


async def test_the_account_bounds_all_its_keys_together(limiter: Limiter) -> None:
    one, two = limiter.leases("k3", "acct3", LIMITS), limiter.leases("k4", "acct3", LIMITS)
    assert (await admit(limiter, one, "a1")).allowed
    assert (await admit(limiter, one, "a2")).allowed
    assert (await admit(limiter, two, "a3")).allowed
    refused = await admit(limiter, two, "a4")  # k4 has one in flight of its 2, the account 3 of 3
    assert refused.error is not None and "account" in refused.error.message


async def test_keyless_requests_share_one_bound_below_keys(limiter: Limiter) -> None:
    anonymous = limiter.leases(None, None, LIMITS)
    assert (await admit(limiter, anonymous, "n1")).allowed
    assert (await admit(limiter, anonymous, "n2")).allowed
    refused = await admit(limiter, anonymous, "n3")
    assert refused.error is not None and "without an API key" in refused.error.message
    assert (await admit(limiter, limiter.leases("k5", None, LIMITS), "p1")).allowed  # a key is not affected


async def test_zero_is_no_bound(redis, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    leases = limiter.leases("k6", None, Limits(key_concurrency=0))
    for n in range(5):
        assert (await admit(limiter, leases, f"z{n}")).allowed
    assert await redis.exists(leases[0].key) == 0


async def test_settlement_returns_the_lease_once(redis, names: Names, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    leases = limiter.leases("k7", "acct7", LIMITS)
    deadline = time.time() + 30
    for request_id in ("s1", "s2"):
        assert (await admit(limiter, leases, request_id, until_ms=settle_by_ms(deadline))).allowed
    assert not (await admit(limiter, leases, "s3")).allowed
    settlement = Settlement(request_id="s1", attempt=0, key_id="k7", model="openai/gpt-4o-mini", deadline=deadline,
                            prompt_tokens=3, completion_tokens=4, cost="0.0001", account="acct7")
    assert (await settle(redis, names, settlement)).status == SETTLED
    assert await members(redis, inflight_key(names, "k7")) == ["s2"]
    assert await members(redis, account_inflight_key(names, "acct7")) == ["s2"]
    assert (await admit(limiter, leases, "s3")).allowed
    await settle(redis, names, settlement)  # a repeat returns nothing more
    assert await members(redis, inflight_key(names, "k7")) == ["s2", "s3"]


async def test_a_failure_or_a_close_returns_the_lease(redis, names: Names, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    leases = limiter.leases("k8", "acct8", LIMITS)
    deadline = time.time() + 30
    for request_id in ("f1", "c1"):
        assert (await admit(limiter, leases, request_id, until_ms=settle_by_ms(deadline))).allowed
    failed = Settlement(request_id="f1", attempt=0, key_id="k8", model="openai/gpt-4o-mini", deadline=deadline,
                        outcome="failed", account="acct8")
    assert (await settle(redis, names, failed)).status == SETTLED
    assert await close(redis, names, "c1", "k8", "", deadline, account="acct8")
    assert await members(redis, inflight_key(names, "k8")) == []
    assert await members(redis, account_inflight_key(names, "acct8")) == []
    anonymous = limiter.leases(None, None, LIMITS)
    assert (await admit(limiter, anonymous, "c2", until_ms=settle_by_ms(deadline))).allowed
    assert await close(redis, names, "c2", "", "", deadline)
    assert "c2" not in await members(redis, anonymous[0].key)


async def test_a_lost_lease_ends_at_its_deadline_whatever_the_traffic(redis, limiter: Limiter) -> None:  # type: ignore[no-untyped-def]
    """A request whose worker and web process were both lost keeps its lease until its own deadline (plus
    the settlement's grace), never longer: admissions do not renew it."""
    leases = limiter.leases("k9", None, LIMITS)
    soon = int(time.time() * 1000) + 300
    assert (await admit(limiter, leases, "lost1", until_ms=soon)).allowed
    assert (await admit(limiter, leases, "lost2", until_ms=soon)).allowed
    assert not (await admit(limiter, leases, "x")).allowed  # steady traffic meanwhile
    while int(time.time() * 1000) <= soon + 50:  # the bound is the score itself (Redis' clock): wait it out
        await asyncio.sleep(0.02)
    assert (await admit(limiter, leases, "after")).allowed
    assert await members(redis, leases[0].key) == ["after"]
    assert 0 < await redis.pttl(leases[0].key) <= later() - int(time.time() * 1000) + 60_000 + 1000


# -- through a gateway: the 429 in each route's envelope, and the lease returned by every end ------------------


@pytest.fixture(scope="module")
def bounded(redis_url: str) -> Iterator[tuple[GatewayHarness, OpenAIFakeState, str, str, sync_redis.Redis]]:
    """A gateway whose keys may have one request in flight (keyless requests: one, all together)."""
    state = OpenAIFakeState()
    with ThreadedServer(create_openai_app(state)) as upstream:
        env = env_for(redis_url, OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY="sk-upstream-test",
                      MEGABRAIN_UPSTREAM_MAX_RETRIES="0", MEGABRAIN_KEY_CONCURRENCY="1",
                      MEGABRAIN_ANONYMOUS_CONCURRENCY="1", MEGABRAIN_FREE_MODELS=FREE)
        key, key_id = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "bounded", with_id=True)
        store = sync_redis.Redis.from_url(redis_url)
        with GatewayHarness.from_env(env) as harness:
            yield harness, state, key, inflight_key(Names(env["MEGABRAIN_NAMESPACE"]), key_id), store
        store.close()


@pytest.fixture
def gw(bounded: tuple[GatewayHarness, OpenAIFakeState, str, str, sync_redis.Redis]) -> Iterator[
        tuple[GatewayHarness, OpenAIFakeState, str, str, sync_redis.Redis]]:
    bounded[1].reset()
    yield bounded
    bounded[1].hold_answers = False


FREE = "openai/gpt-4o"  # free in this gateway (MEGABRAIN_FREE_MODELS): keyless requests may use it
PAID = "openai/gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]


def in_flight(store: sync_redis.Redis, key: str) -> int:
    return int(store.zcard(key))


def hold_one(gw_: tuple[GatewayHarness, OpenAIFakeState, str, str, sync_redis.Redis],
             key: str | None, model: str = PAID) -> tuple[threading.Thread, list[Any]]:
    """One chat request held at the upstream (in flight), answered on the test's release."""
    harness, state, *_ = gw_
    state.hold_answers = True
    seen = len(state.requests)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(
        sdk_for(harness.url, key).chat.completions.create(model=model, messages=HI)))  # type: ignore[arg-type]
    thread.start()
    assert wait_until(lambda: len(state.requests) > seen, 10), "the held request never reached the upstream"
    return thread, got


def test_over_the_bound_each_route_answers_429_in_its_own_envelope(gw) -> None:  # type: ignore[no-untyped-def]
    harness, state, key, leases, store = gw
    thread, got = hold_one(gw, key)
    assert in_flight(store, leases) == 1
    with pytest.raises(openai.RateLimitError) as chat:
        sdk_for(harness.url, key).chat.completions.create(model=PAID, messages=HI)  # type: ignore[arg-type]
    assert chat.value.response.headers["retry-after"] == "1"
    assert chat.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "1 at once" in chat.value.body["message"]  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as messages:
        anthropic.Anthropic(base_url=harness.url, api_key=key, max_retries=0).messages.create(
            model=PAID, max_tokens=16, messages=HI)  # type: ignore[arg-type]
    assert messages.value.response.headers["retry-after"] == "1"
    assert messages.value.body["type"] == "error"  # type: ignore[index]
    assert messages.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    gemini = genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=harness.url, timeout=20_000))
    with pytest.raises(genai_errors.ClientError) as generate:
        gemini.models.generate_content(model=PAID, contents="hi")
    assert generate.value.code == 429 and generate.value.status == "RESOURCE_EXHAUSTED"
    refused = httpx.post(harness.url + f"/v1beta/models/{PAID}:generateContent",
                         json={"contents": [{"parts": [{"text": "hi"}]}]}, headers={"x-goog-api-key": key}, timeout=20)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert len(state.requests) == 1  # none of the refused ones reached the upstream
    state.hold_answers = False
    thread.join(20)
    assert got and got[0].choices[0].message.content == EXPECTED
    assert in_flight(store, leases) == 0  # the answer returned its lease: the next request gets in
    assert sdk_for(harness.url, key).chat.completions.create(model=PAID, messages=HI).choices  # type: ignore[arg-type]


def test_keyless_requests_share_their_bound_and_keys_are_not_affected(gw) -> None:  # type: ignore[no-untyped-def]
    harness, state, key, leases, store = gw
    thread, got = hold_one(gw, None, FREE)
    with pytest.raises(openai.RateLimitError) as anonymous:
        sdk_for(harness.url, None).chat.completions.create(model=FREE, messages=HI)  # type: ignore[arg-type]
    assert "without an API key" in anonymous.value.body["message"]  # type: ignore[index]
    answered: list[Any] = []
    paid = threading.Thread(target=lambda: answered.append(
        sdk_for(harness.url, key).chat.completions.create(model=PAID, messages=HI)))  # type: ignore[arg-type]
    paid.start()  # admitted beside the keyless one (then held too, at the upstream)
    assert wait_until(lambda: len(state.requests) == 2, 10)
    state.hold_answers = False
    thread.join(20)
    paid.join(20)
    assert got and answered


def test_a_failure_and_a_client_that_leaves_return_the_lease(gw) -> None:  # type: ignore[no-untyped-def]
    harness, state, key, leases, store = gw
    state.failures = [500]
    with pytest.raises(openai.APIStatusError):
        sdk_for(harness.url, key).chat.completions.create(model=PAID, messages=HI)  # type: ignore[arg-type]
    assert in_flight(store, leases) == 0
    thread, _ = hold_one(gw, None, FREE)  # (keeps the keyless bound busy: a key is counted apart)
    state.hold_answers = False
    thread.join(20)
    state.tokens, state.token_delay = 200, 0.02
    with httpx.stream("POST", harness.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": PAID, "messages": HI, "stream": True}, timeout=20) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the first token: the client leaves mid-stream
    assert wait_until(lambda: in_flight(store, leases) == 0, 10), "the abandoned stream kept its lease"
    state.token_delay = 0.0
    assert sdk_for(harness.url, key).chat.completions.create(model=PAID, messages=HI).choices  # type: ignore[arg-type]


def test_keyed_jobs_are_claimed_before_keyless_ones_each_class_in_arrival_order(names: Names) -> None:
    """The pool's queue has two classes (``common/queue.py``): the claim takes the lowest score up to now, so
    a keyed job enqueued last is taken first; the queue-age metric still reads each job's enqueue time."""
    keyless = [job_write(names, "p", "f", f"free{n}", b"x", expires_s=5) for n in range(2)]
    keyed = [job_write(names, "p", "f", f"paid{n}", b"x", expires_s=5, priority=True) for n in range(2)]
    now_ms = time.time() * 1000
    order = sorted(keyless + keyed, key=lambda w: (w.score_ms, w.job_id))
    assert [w.job_id for w in order] == ["paid0", "paid1", "free0", "free1"]
    assert all(0 < w.score_ms <= now_ms for w in order)  # every one may run now
    for write in order:
        assert now_ms - 1000 <= enqueued_ms(write.score_ms, now_ms) <= now_ms


async def test_an_overloaded_queue_refuses_each_class_by_its_own_head(redis: Any, names: Names) -> None:
    """A queue whose next job waited past the bound (``QUEUE_WAIT_SHARE``) refuses new jobs at enqueue; a
    keyed job only when that head is keyed too, since it goes ahead of every keyless one."""
    old_ms = int(time.time() * 1000) - 10_000
    await redis.zadd(names.queue("p"), {"stale-free": old_ms})  # a keyless job waiting for 10 s
    fresh = job_write(names, "p", "f", "free1", b"x", expires_s=5, max_wait_s=2)
    keyed = job_write(names, "p", "f", "paid1", b"x", expires_s=5, priority=True, max_wait_s=2)
    unbounded = job_write(names, "p", "f", "free2", b"x", expires_s=5)
    assert await write_job(redis, fresh) is False  # behind a 10 s wait: refused now, not in 5 s
    assert await write_job(redis, keyed) is True  # ahead of it: served next
    assert await write_job(redis, unbounded) is True  # no bound asked: as before
    await redis.zadd(names.queue("p"), {"stale-paid": old_ms - PRIORITY_HEAD_START_MS})
    keyed2 = job_write(names, "p", "f", "paid2", b"x", expires_s=5, priority=True, max_wait_s=2)
    assert await write_job(redis, keyed2) is False  # behind a keyed job waiting 10 s
    queued = {m.decode() for m in await redis.zrange(names.queue("p"), 0, -1)}
    assert queued == {"stale-free", "paid1", "free2", "stale-paid"}  # refused jobs left nothing behind
