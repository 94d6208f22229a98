"""Money that is never lost and never doubled, with real processes (web and workers) on a real Redis.

Each test reconciles what clients got against what the store bills: the key's usage counters, its month's
spend, the generation records behind ``/api/v1/generation``, the budget reservations in flight, and — the
key belongs to an account — that account's prepaid credits: its ledger's usage entries, its balance and
its credit holds (``common/settlement.py`` and ``common/ledger.py`` state the rules checked here). Faults are
real signals to real worker
processes: SIGKILL at whatever instant the load puts them, SIGSTOP past the liveness TTL and SIGCONT.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis as sync_redis

from common.ledger import Ledger as CreditLedger, credit_holds_key, credits_key, ledger_key, nanos
from common.names import Names
from common.redis import connect
from common.usage import spend_key, usage_key, utc_day, utc_month
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, ProcessGateway, create_key, env_for, wait_until

MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]
BUDGET = 100.0  # USD: every request reserves its worst case against it, none is refused
ACCOUNT = "settle-acct"  # the key's owner: every request holds and spends its credits too
GRANT = nanos("100")


@dataclass
class Outcome:
    """What one client saw: the answer's id and cost when it got the whole answer, else nothing billable."""

    request_id: str
    answered: bool
    cost: Decimal = Decimal(0)
    stream: bool = False


@dataclass
class Ledger:
    """The store's view of one key, read directly from Redis."""

    store: sync_redis.Redis
    names: Names
    key_id: str
    samples: list[Decimal] = field(default_factory=list)

    def usage(self, name: str = "requests") -> int:
        total = 0
        for day in {utc_day(), utc_day(time.time() - 86400)}:  # a run across midnight (UTC) counts both days
            total += int(self.store.hget(usage_key(self.names, self.key_id, day), f"{MODEL}|{name}") or 0)
        return total

    def spend(self) -> Decimal:
        return Decimal((self.store.get(spend_key(self.names, self.key_id, utc_month())) or b"0").decode())

    def held(self) -> Decimal:
        """The key's reservations in flight (total), as the admission script reads it."""
        value = Decimal((self.store.get(self.names.key(f"held:{self.key_id}")) or b"0").decode())
        self.samples.append(value)
        return value

    def live_workers(self) -> int:
        """Worker processes whose liveness key exists (a killed one's expires within 3 s)."""
        return len(list(self.store.scan_iter(match=self.names.alive("*"))))

    def holds(self) -> int:
        return int(self.store.zcard(self.names.key(f"holds:{self.key_id}")))

    def credits(self) -> dict[str, int]:
        """The account's credits hash (nanodollars): balance, held, total_credits, total_usage."""
        stored = {k.decode(): int(v) for k, v in self.store.hgetall(credits_key(self.names, ACCOUNT)).items()}
        return {name: stored.get(name, 0) for name in ("balance", "held", "total_credits", "total_usage")}

    def credit_entries(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.store.lrange(ledger_key(self.names, ACCOUNT), 0, -1)]

    def credit_holds(self) -> int:
        return int(self.store.zcard(credit_holds_key(self.names, ACCOUNT)))

    def unbilled(self, reason: str, name: str = "requests") -> int:
        total = 0
        for day in {utc_day(), utc_day(time.time() - 86400)}:
            for raw_field, value in self.store.hgetall(self.names.key(f"unbilled:{day}")).items():
                if raw_field.decode() == f"{reason}|{MODEL}|{name}":
                    total += int(value)
        return total

    def generation(self, url: str, key: str, request_id: str) -> dict[str, Any] | None:
        response = httpx.get(url + "/api/v1/generation", params={"id": f"chatcmpl-{request_id}"},
                             headers={"authorization": f"Bearer {key}"}, timeout=10)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture
def budget_env(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[tuple[dict[str, str], str, str]]:
    """The gateway's environment and a key with a monthly budget (so every request holds a reservation)."""
    _, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test")
    key, key_id = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "ledger", monthly_budget=BUDGET, with_id=True,
                             owner=ACCOUNT)

    async def grant() -> None:
        client = connect(redis_url)
        try:
            await CreditLedger(client, Names(env["MEGABRAIN_NAMESPACE"])).apply(ACCOUNT, "grant", GRANT)
        finally:
            await client.aclose()

    asyncio.run(grant())
    yield env, key, key_id


@pytest.fixture
def ledger(redis_url: str, budget_env: tuple[dict[str, str], str, str]) -> Iterator[Ledger]:
    env, _, key_id = budget_env
    store = sync_redis.Redis.from_url(redis_url)
    yield Ledger(store, Names(env["MEGABRAIN_NAMESPACE"]), key_id)
    store.close()


async def one_request(client: httpx.AsyncClient, key: str, stream: bool) -> Outcome:
    """One chat request; ``answered`` only when the client got the whole answer (a stream's ``[DONE]``)."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 64}
    headers = {"authorization": f"Bearer {key}"}
    if not stream:
        try:
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError:
            return Outcome("", False)
        request_id = response.headers.get("x-request-id", "")
        if response.status_code != 200:
            return Outcome(request_id, False)
        data = response.json()
        if not data.get("choices"):  # an error envelope after the padding's 200
            return Outcome(request_id, False)
        return Outcome(request_id, True, Decimal(str(data["usage"]["cost"])))
    body.update(stream=True, stream_options={"include_usage": True})
    request_id, cost, done = "", None, False
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            request_id = response.headers.get("x-request-id", "")
            if response.status_code != 200:
                return Outcome(request_id, False, stream=True)
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Outcome(request_id, False, stream=True)
                if chunk.get("usage"):
                    cost = chunk["usage"]["cost"]
    except httpx.HTTPError:
        return Outcome(request_id, False, stream=True)
    if done and cost is not None:
        return Outcome(request_id, True, Decimal(str(cost)), stream=True)
    return Outcome(request_id, False, stream=True)


async def load(url: str, key: str, total: int, concurrency: int, outcomes: list[Outcome]) -> list[Outcome]:
    """``total`` requests (every third one a stream), ``concurrency`` at a time, into ``outcomes``."""
    queue = iter(range(total))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def runner() -> None:
            for n in queue:
                outcomes.append(await one_request(client, key, stream=n % 3 == 2))

        await asyncio.gather(*(runner() for _ in range(concurrency)))
    return outcomes


def reconcile(ledger: Ledger, outcomes: list[Outcome], url: str, key: str) -> None:
    """Every answered request is billed exactly once (usage, spend, generation); nothing else is; nothing
    stays reserved."""
    answered = [o for o in outcomes if o.answered]
    billed = sum((o.cost for o in answered), Decimal(0))

    def balanced() -> bool:
        return ledger.usage() == len(answered) and ledger.spend() == billed and ledger.holds() == 0 \
            and ledger.held() == 0 and ledger.credit_holds() == 0

    wait_until(balanced, 5)  # the rule is "before the answer": nothing should be left to wait for
    assert ledger.usage() == len(answered), (ledger.usage(), len(answered), len(outcomes))
    assert ledger.spend() == billed, (ledger.spend(), billed)
    for outcome in outcomes:
        record = ledger.generation(url, key, outcome.request_id) if outcome.request_id else None
        if outcome.answered:
            assert record is not None, f"answered {outcome.request_id} has no generation record"
            assert Decimal(str(record["total_cost"])) == outcome.cost
        else:
            assert record is None, f"unanswered {outcome.request_id} was billed"
    assert ledger.holds() == 0 and ledger.held() == 0, (ledger.holds(), ledger.held())
    assert min(ledger.samples, default=Decimal(0)) >= 0
    # the account's credits: one usage entry per answered request, of its cost; nothing held; exact sums
    credits, entries = ledger.credits(), ledger.credit_entries()
    usage = [e for e in entries if e["kind"] == "usage"]
    assert sorted(e["id"] for e in usage) == sorted(f"usage-{o.request_id}" for o in answered)
    assert credits["total_usage"] == sum(nanos(o.cost) for o in answered) == -sum(e["amount"] for e in usage)
    assert credits["balance"] == GRANT - credits["total_usage"] == sum(e["amount"] for e in entries)
    assert credits["held"] == 0 and ledger.credit_holds() == 0


def test_answered_requests_are_billed_exactly_once_through_worker_kills(
        budget_env: tuple[dict[str, str], str, str], ledger: Ledger,
        fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """300 requests at concurrency 10; after every 50, the oldest worker is SIGKILLed (replacements were
    started at the beginning), at whatever instant of its requests that falls: the ledger matches what
    clients got."""
    env, key, _ = budget_env
    state, _ = fake_openai
    state.latency, state.token_delay = 0.3, 0.02  # requests in flight at every kill
    kills: list[float] = []
    with ProcessGateway(env, workers=2) as gw:
        for _ in range(5):
            gw.start_worker()  # spares, so that every kill leaves a live worker
        # all seven live before the load: on a loaded machine spares still booting would let the load end
        # before five kills could land (each waits for two live workers besides the dying)
        assert wait_until(lambda: ledger.live_workers() >= 7, 60), "the spare workers never came up"

        async def killer(outcomes: list[Outcome], load_done: asyncio.Event) -> None:
            while len(kills) < 5 and not load_done.is_set():
                await asyncio.sleep(0.01)
                if len(outcomes) < 50 * (len(kills) + 1):
                    continue
                # never the last live worker: a killed one's liveness key outlives it by up to 3 s
                dying = sum(1 for at in kills if time.monotonic() - at < 3.5)
                if await asyncio.to_thread(ledger.live_workers) - dying < 2:
                    continue
                next(p for p in gw.workers if p.poll() is None).send_signal(signal.SIGKILL)  # the oldest
                kills.append(time.monotonic())

        async def scenario() -> list[Outcome]:
            outcomes: list[Outcome] = []
            load_done = asyncio.Event()
            kill_task = asyncio.create_task(killer(outcomes, load_done))
            await load(gw.url, key, 300, 10, outcomes)
            load_done.set()
            await kill_task
            return outcomes

        outcomes = asyncio.run(scenario())
        assert len(kills) == 5, f"only {len(kills)} kills landed during the load"
        answered = sum(o.answered for o in outcomes)
        assert answered >= 240, f"only {answered}/300 answered"  # the rest: streams a kill cut short
        reconcile(ledger, outcomes, gw.url, key)


def test_paused_worker_cannot_bill_twice(budget_env: tuple[dict[str, str], str, str], ledger: Ledger,
                                         fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A worker SIGSTOPped past its liveness TTL (4.5 s in all): its requests are re-run on another
    worker; SIGCONTed, its superseded attempts get their upstream answers and try to settle: refused,
    counted as unbilled, never billed."""
    env, key, _ = budget_env
    state, _ = fake_openai
    state.hold_answers = True  # the upstream answers nobody until the test says so
    with ProcessGateway({**env, "MEGABRAIN_HEARTBEAT_TIMEOUT": "30"}, workers=1) as gw:
        paused = gw.workers[0]
        stop = threading.Event()

        def sample() -> None:  # the reservation total, watched all along: never below zero
            while not stop.is_set():
                ledger.held()
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        async def scenario() -> list[Outcome]:
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
                tasks = [asyncio.create_task(one_request(client, key, stream=False)) for _ in range(20)]
                # all 20 at the upstream through the one worker; then a second worker, live
                assert await asyncio.to_thread(wait_until, lambda: len(state.requests) >= 20, 15)
                gw.start_worker()
                assert await asyncio.to_thread(wait_until, lambda: ledger.live_workers() == 2, 20)
                paused.send_signal(signal.SIGSTOP)
                started = time.monotonic()
                # found dead by its liveness key (3 s): every request is re-run on the other worker
                assert await asyncio.to_thread(wait_until, lambda: len(state.requests) >= 40, 15)
                state.hold_answers = False  # the paused worker's answers wait in its socket buffers
                outcomes = await asyncio.gather(*tasks)
                await asyncio.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
                paused.send_signal(signal.SIGCONT)
                return outcomes

        try:
            outcomes = asyncio.run(scenario())
            # each superseded attempt reads its answer after SIGCONT and tries to settle: refused (or billed)
            wait_until(lambda: ledger.unbilled("superseded") >= 20 or ledger.usage() > 20, 15)
            time.sleep(0.5)  # a settlement that got through would show up now
        finally:
            stop.set()
            sampler.join(5)
        assert all(o.answered for o in outcomes), [o for o in outcomes if not o.answered]
        reconcile(ledger, outcomes, gw.url, key)
        assert ledger.usage() == 20  # not 40: the paused worker's 20 attempts are not billed
        assert ledger.unbilled("superseded") == 20  # what their upstream calls did, counted for the operator
        assert len(state.requests) == 40


def test_stream_failed_after_its_first_token_bills_nothing(
        budget_env: tuple[dict[str, str], str, str], ledger: Ledger,
        fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A stream that ends in an error frame was not answered: the key is not charged, its reservation is
    released, and what the upstream did is counted for the operator as unbilled ``failed`` work."""
    env, key, _ = budget_env
    state, _ = fake_openai
    state.failures = ["midstream_error"]
    with GatewayHarness.from_env(env) as gw:
        outcome = asyncio.run(_single(gw.url, key, stream=True))
        assert not outcome.answered and outcome.request_id
        reconcile(ledger, [outcome], gw.url, key)
        assert ledger.unbilled("failed") == 1
        # the next one is answered and billed as usual
        answered = asyncio.run(_single(gw.url, key, stream=True))
        assert answered.answered
        reconcile(ledger, [outcome, answered], gw.url, key)


def test_failed_request_releases_its_reservation(budget_env: tuple[dict[str, str], str, str], ledger: Ledger,
                                                 fake_openai: tuple[OpenAIFakeState, str]) -> None:
    env, key, _ = budget_env
    state, _ = fake_openai
    state.failures = [400]  # the upstream refuses: no retry, no fallback, the client gets the error
    with GatewayHarness.from_env(env) as gw:
        outcome = asyncio.run(_single(gw.url, key, stream=False))
        assert not outcome.answered
        reconcile(ledger, [outcome], gw.url, key)


async def _single(url: str, key: str, stream: bool) -> Outcome:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await one_request(client, key, stream)
