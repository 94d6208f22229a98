"""Prepaid credits (common/ledger.py): a signed-in user's key spends its account's balance; operator keys
do not. A fresh account without credit is refused paid models with 402 ``insufficient_credits``; the
operator's grant (``megabrain credits grant``) lets the same call through; ``GET /api/v1/credits`` and the
ledger agree with what the answers said they cost. Under a burst through two web processes the balance
never goes below zero, and ledger, balance and the answers' costs reconcile to the nanodollar.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import redis

from common.ledger import Ledger, LedgerError, credit_holds_key, format_usd, nanos, reservation_nanos, usd
from common.names import Names
from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, ProcessGateway, create_key, env_for
from tests.pages import ADMIN_KEY, FREE, PAID, Browser, accounts_env, keys_in

MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in a sentence."}]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli.main", "credits", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def chat(url: str, key: str | None, model: str = PAID, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body},
                      headers=headers, timeout=30)


# --- the ledger itself ------------------------------------------------------------------------------------


def test_amounts_are_exact_nanodollars() -> None:
    assert nanos("5") == 5_000_000_000 and nanos("0.000000001") == 1
    assert reservation_nanos(Decimal("0.0000000001")) == 1  # a reservation rounds up: it always covers
    assert usd(nanos("0.1") + nanos("0.2")) == Decimal("0.3")  # no float on the way
    assert format_usd(nanos("5")) == "$5.00" and format_usd(nanos("0.000123")) == "$0.000123"
    with pytest.raises(LedgerError):
        nanos("NaN")


def test_entries_are_applied_once_and_never_below_zero(redis_url: str) -> None:
    names = Names("tledger" + __import__("secrets").token_hex(4))

    async def scenario() -> None:
        store = connect(redis_url)
        ledger = Ledger(store, names)
        try:
            first = await ledger.apply("acct", "grant", nanos("1.10"), note="welcome", entry_id="g-1")
            again = await ledger.apply("acct", "grant", nanos("1.10"), note="welcome", entry_id="g-1")
            assert first.applied and not again.applied and again.duplicate
            await ledger.apply("acct", "adjust", -nanos("0.10"), note="correction")
            with pytest.raises(LedgerError, match="below zero"):
                await ledger.apply("acct", "adjust", -nanos("1.01"))
            with pytest.raises(LedgerError):
                await ledger.apply("acct", "usage", -1)  # usage is the settlement's alone
            balance = await ledger.balance("acct")
            entries = await ledger.all_entries("acct")
            assert balance.balance == nanos("1") == balance.total_credits - balance.total_usage
            assert sum(e.amount for e in entries) == balance.balance and len(entries) == 2
            assert [e.note for e in entries] == ["welcome", "correction"]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def refusals_counted(gw: GatewayHarness) -> float:
    """``megabrain_credit_events_total{event="insufficient_credits"}`` on the gateway's ``/metrics``."""
    text = httpx.get(gw.url + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).text
    found = re.search(r'^megabrain_credit_events_total\{event="insufficient_credits"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


# --- a new user, as the issue tried it --------------------------------------------------------------------


@pytest.fixture
def accounts_gateway(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                     tmp_path: Path) -> Iterator[GatewayHarness]:
    env = accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="0")
    with GatewayHarness.from_env(env) as harness:
        yield harness


def test_a_fresh_account_pays_with_credits_and_operator_keys_do_not(accounts_gateway: GatewayHarness) -> None:
    gw = accounts_gateway
    key = keys_in(Browser(gw.url).join("new@example.org").text)[0]
    refusals_before = refusals_counted(gw)

    refused = chat(gw.url, key, max_tokens=100000)
    assert refused.status_code == 402, refused.text
    body = refused.json()
    assert body["error_type"] == "insufficient_credits" and body["error"]["code"] == "INSUFFICIENT_CREDITS"
    message = body["error"]["message"]
    assert "balance of $0.00" in message and "/profile" in message and "could cost up to $" in message
    assert chat(gw.url, key, FREE).status_code == 200  # free models stay free
    credits = httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert credits.json()["data"]["total_credits"] == 0 and credits.json()["data"]["total_usage"] == 0

    env = dict(gw.settings.env)
    granted = run_cli(env, "grant", "new@example.org", "0.05", "--note", "trial", "--id", "trial-1", "--json")
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout)["balance"]["balance"] == "0.05"
    repeated = run_cli(env, "grant", "new@example.org", "0.05", "--id", "trial-1", "--json")
    assert json.loads(repeated.stdout)["duplicate"] is True  # one id, one entry

    still_too_dear = chat(gw.url, key, max_tokens=100000)  # 100k output tokens at $10/M: $1 > $0.05
    assert still_too_dear.status_code == 402
    answered = chat(gw.url, key, max_tokens=50)
    assert answered.status_code == 200, answered.text
    cost = Decimal(str(answered.json()["usage"]["cost"]))
    assert cost > 0

    data = httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {key}"}, timeout=10).json()["data"]
    assert Decimal(data["balance"]) == Decimal("0.05") - cost and Decimal(data["held"]) == 0
    assert Decimal(str(data["total_credits"])) == Decimal("0.05")
    assert Decimal(str(data["total_usage"])) == cost
    ledger = json.loads(run_cli(env, "ledger", "new@example.org", "--json").stdout)
    assert [(e["kind"], Decimal(e["amount"])) for e in ledger["data"]] == [("usage", -cost), ("grant", Decimal("0.05"))]
    assert ledger["data"][0]["model"] == PAID

    key_view = httpx.get(gw.url + "/api/v1/key", headers={"authorization": f"Bearer {key}"}, timeout=10).json()["data"]
    assert key_view["limit"] == 0.05 and Decimal(str(key_view["limit_remaining"])) == Decimal("0.05") - cost
    assert key_view["is_free_tier"] is False

    # the same through the admin API: an account by id, a grant applied once under its id, the ledger
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    account = ledger["balance"]["account"]
    change = {"amount": "1.25", "kind": "grant", "note": "support", "id": "ticket-7"}
    for _ in range(2):
        granted_http = httpx.post(f"{gw.url}/admin/credits/{account}", json=change, headers=admin, timeout=10)
        assert granted_http.status_code == 200, granted_http.text
    assert granted_http.json()["duplicate"] is True
    assert Decimal(granted_http.json()["balance"]["balance"]) == Decimal("1.30") - cost
    below = httpx.post(f"{gw.url}/admin/credits/{account}", json={"amount": "-5", "kind": "adjust"}, headers=admin,
                       timeout=10)
    assert below.status_code == 400 and "below zero" in below.json()["error"]["message"]
    listed = httpx.get(f"{gw.url}/admin/credits/{account}", headers=admin, timeout=10).json()
    assert [e["kind"] for e in listed["data"]] == ["grant", "usage", "grant"]
    assert httpx.get(f"{gw.url}/admin/credits/nobody", headers=admin, timeout=10).status_code == 404
    assert httpx.get(f"{gw.url}/admin/credits/{account}", timeout=10).status_code == 401
    assert refusals_counted(gw) == refusals_before + 2  # megabrain_credit_events_total{event=…}

    operator_key = create_key(gw.settings.redis_url, gw.settings.namespace, "operator")
    assert chat(gw.url, operator_key, max_tokens=100000).status_code == 200  # no owner: as before, no credits
    operator_credits = httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {operator_key}"},
                                 timeout=10)
    assert operator_credits.status_code == 400 and "monthly budget" in operator_credits.json()["error"]["message"]


def test_embeddings_hold_their_input_at_one_token_per_byte(accounts_gateway: GatewayHarness) -> None:
    """An embedding's worst case is its whole body as tokens: a large input on a small balance is refused
    before it runs, a small one is served and charged."""
    gw = accounts_gateway
    key = create_key(gw.settings.redis_url, gw.settings.namespace, "embedder", owner="embedder-acct")

    async def grant() -> None:
        client = connect(gw.settings.redis_url)
        try:  # text-embedding-3-small: $0.02 per million tokens, so $0.001 covers 50,000 tokens
            await Ledger(client, Names(gw.settings.namespace)).apply("embedder-acct", "grant", nanos("0.001"))
        finally:
            await client.aclose()

    gw.run(grant())
    headers = {"authorization": f"Bearer {key}"}
    large = httpx.post(gw.url + "/v1/embeddings", json={"model": "openai/text-embedding-3-small",
                                                       "input": "word " * 20_000}, headers=headers, timeout=30)
    assert large.status_code == 402 and large.json()["error_type"] == "insufficient_credits", large.text
    small = httpx.post(gw.url + "/v1/embeddings", json={"model": "openai/text-embedding-3-small",
                                                       "input": "a few words"}, headers=headers, timeout=30)
    assert small.status_code == 200, small.text


def test_transcriptions_hold_the_longest_audio_their_upload_can_carry(
        accounts_gateway: GatewayHarness, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A transcription holds what its upload could cost at the lowest speech bitrate (750 bytes a second):
    audio that could cost more than the balance is refused 402 before it reaches a worker (the upstream sees
    no call), audio within it is answered and settled at exactly its reported duration."""
    from tests.test_transcriptions import make_wav
    gw = accounts_gateway
    state = fake_openai[0]
    key = create_key(gw.settings.redis_url, gw.settings.namespace, "listener", owner="listener-acct")
    names = Names(gw.settings.namespace)

    async def grant() -> None:
        client = connect(gw.settings.redis_url)
        try:  # whisper-1: $0.36 an hour, $0.0001 a second, so $0.001 covers 10 s (7,500 bytes at the floor)
            await Ledger(client, names).apply("listener-acct", "grant", nanos("0.001"))
        finally:
            await client.aclose()

    async def balance() -> tuple[Decimal, Decimal]:
        client = connect(gw.settings.redis_url)
        try:
            found = await Ledger(client, names).balance("listener-acct")
            return usd(found.balance), usd(found.held)
        finally:
            await client.aclose()

    def upstream_calls() -> int:
        return sum(1 for r in state.requests if "transcriptions" in str(r.get("path", "")))

    gw.run(grant())
    sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    long_audio = make_wav(seconds=4)  # 64 kB: up to ~86 s at the floor, $0.0086 > $0.001
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.audio.transcriptions.create(model="whisper-1", file=("long.wav", long_audio, "audio/wav"))
    assert refused.value.status_code == 402, refused.value.response.text
    assert refused.value.response.json()["error_type"] == "insufficient_credits"
    assert upstream_calls() == 0
    assert gw.run(balance()) == (Decimal("0.001"), Decimal(0))

    # no declared length: held at the upload limit (25 MB), so even a short file is refused unread
    boundary = "creditboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + make_wav() + f"\r\n--{boundary}--\r\n".encode()
    chunked = httpx.post(gw.url + "/v1/audio/transcriptions", content=iter([body]), timeout=30,
                         headers={"authorization": f"Bearer {key}",
                                  "content-type": f"multipart/form-data; boundary={boundary}"})
    assert chunked.status_code == 402 and chunked.json()["error_type"] == "insufficient_credits", chunked.text
    assert upstream_calls() == 0

    short = sdk.audio.transcriptions.create(model="whisper-1", file=("short.wav", make_wav(), "audio/wav"))
    assert short.text.startswith("transcribed")  # 4 kB: up to ~6 s, $0.0006 held
    assert upstream_calls() == 1
    # the fake reports 1 s of audio: charged $0.0001 exactly, and nothing stays held
    assert gw.run(balance()) == (Decimal("0.0009"), Decimal(0))


def test_signup_credit_is_granted_once_per_new_account(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                                                        tmp_path: Path) -> None:
    env = accounts_env(redis_url, fake_openai[1], tmp_path, signup_credit="0.25")
    with GatewayHarness.from_env(env) as gw:
        key = keys_in(Browser(gw.url).join("welcome@example.org").text)[0]
        Browser(gw.url).signup("welcome@example.org")  # signing up again with a taken email grants nothing
        data = httpx.get(gw.url + "/api/v1/credits", headers={"authorization": f"Bearer {key}"}, timeout=10).json()
        assert data["data"]["total_credits"] == 0.25 and data["data"]["balance"] == "0.25"
        assert chat(gw.url, key, max_tokens=16).status_code == 200


def test_signup_credit_must_be_an_amount() -> None:
    from common.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="MEGABRAIN_SIGNUP_CREDIT"):
        load_settings({"MEGABRAIN_SIGNUP_CREDIT": "-1"}, config_path=None)
    assert load_settings({"MEGABRAIN_SIGNUP_CREDIT": "2.50"}).signup_credit == "2.50"


# --- bursts -----------------------------------------------------------------------------------------------


@pytest.fixture
def two_web_processes(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]
                      ) -> Iterator[tuple[ProcessGateway, ProcessGateway]]:
    state, upstream = fake_openai
    state.latency = 0.3  # keeps the burst in flight together: the holds, not luck, must hold the line
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test")
    with ProcessGateway(env) as first, ProcessGateway(env, workers=0) as second:
        yield first, second


def test_fifty_concurrent_requests_never_take_a_balance_below_zero(
        two_web_processes: tuple[ProcessGateway, ProcessGateway], redis_url: str) -> None:
    first, second = two_web_processes
    namespace = first.env["MEGABRAIN_NAMESPACE"]
    names = Names(namespace)
    key = create_key(redis_url, namespace, "burst", owner="burster")
    max_tokens = 16
    # one request's worst case: its prompt estimate and 16 tokens of output at gpt-4o's prices; the balance
    # covers about five of them
    store = redis.Redis.from_url(redis_url)

    async def grant() -> None:
        client = connect(redis_url)
        try:
            await Ledger(client, names).apply("burster", "grant", nanos("0.001"), note="burst")
        finally:
            await client.aclose()

    asyncio.run(grant())

    async def one(n: int) -> Decimal | int:
        client = openai.AsyncOpenAI(base_url=(first, second)[n % 2].url + "/v1", api_key=key, max_retries=0,
                                    timeout=30)
        try:
            completion = await client.chat.completions.create(model=PAID, messages=MESSAGES, max_tokens=max_tokens)
        except openai.APIStatusError as error:
            assert error.status_code == 402, error.response.text
            assert error.response.json()["error_type"] == "insufficient_credits"
            return 402
        finally:
            await client.close()
        return Decimal(str(completion.usage.model_dump()["cost"]))  # type: ignore[union-attr]

    async def burst() -> list[Decimal | int]:
        return await asyncio.gather(*(one(n) for n in range(50)))

    try:
        outcomes = asyncio.run(burst())
        costs = [c for c in outcomes if isinstance(c, Decimal)]
        refused = outcomes.count(402)
        assert costs and refused >= 1 and len(costs) + refused == 50
        assert 50 * costs[0] > Decimal("0.001")  # without holds this burst would overspend
        answered = sum(nanos(c) for c in costs)
        credits = {k.decode(): int(v) for k, v in store.hgetall(names.key("credits:burster")).items()}
        ledger = [json.loads(raw) for raw in store.lrange(names.key("credits:ledger:burster"), 0, -1)]
        # settled before each answer reached its client: nothing to wait for
        assert credits["balance"] >= 0 and credits["held"] == 0
        assert store.zcard(credit_holds_key(names, "burster")) == 0  # every hold settled or returned
        assert credits["total_usage"] == answered  # every answered request billed once, exactly
        assert credits["balance"] == nanos("0.001") - answered == sum(e["amount"] for e in ledger)
        assert len([e for e in ledger if e["kind"] == "usage"]) == len(costs)
    finally:
        store.close()
