"""Bounds on accounts and on the operator's surfaces (issue 23, findings 7 and 8).

The audit: keys per account were unlimited and each Profile render read 30 days of usage per key (300
keys and four reloads took another user's ``/api/v1/key`` from 5 ms to 370 ms); transcription uploads
(25 MB each) were read before the key was checked (8 uploads with an unknown key: +205 MB); the admin
key could be any string (``pin-7391`` found in 29 s) and wrong ones were neither limited nor logged;
emails were stored in plain text, the index an unsalted SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis as sync_redis

from api.access.accounts import AccountStore, HashingSlots, email_key
from api.access.keys import KeyLimitError, KeyStore
from api.routes import uploads
from common.names import Names
from common.redis import connect
from common.server_secret import SECRET_FILE, server_secret
from common.settings import ConfigError, Settings
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import TEST_SECRET, GatewayHarness, RedisServer, env_for, wait_until
from tests.pages import ADMIN_KEY, PAID, PASSWORD, Browser, accounts_env, keys_in
from tests.redis_commands import command_counts

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def start(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path
          ) -> Iterator[Callable[..., GatewayHarness]]:
    started: list[GatewayHarness] = []

    def run(pools: tuple[str, ...] = ("openai",), **options: Any) -> GatewayHarness:
        harness = GatewayHarness.from_env(accounts_env(redis_url, fake_openai[1], tmp_path, **options),
                                          pools=pools).start()
        started.append(harness)
        return harness

    yield run
    for harness in started:
        harness.stop()


# --- keys per account ----------------------------------------------------------------------------------


def test_keys_per_account_are_bounded_and_revoking_frees_a_slot(start: Callable[..., GatewayHarness]) -> None:
    gw = start(keys_per_account=3)
    browser = Browser(gw.url)
    first = keys_in(browser.join("many@example.org").text)[0]
    for name in ("two", "three"):
        assert browser.submit("/profile", "/profile/keys", {"name": name}).status_code == 201
    over = browser.submit("/profile", "/profile/keys", {"name": "four"})
    assert over.status_code == 400 and "may hold 3 keys" in over.text and keys_in(over.text) == []
    usage = httpx.get(gw.url + "/usage", headers={"authorization": f"Bearer {first}"}).json()
    assert browser.submit("/profile", f"/profile/keys/{usage['key_id']}/revoke", {}).status_code == 303
    again = browser.submit("/profile", "/profile/keys", {"name": "four"})
    assert again.status_code == 201 and len(keys_in(again.text)) == 1
    assert again.text.count(">revoked<") == 1  # the revoked key is still listed


async def test_concurrent_creations_cannot_pass_the_bound_together(redis: Any, names: Names) -> None:
    store = KeyStore(redis, names)
    await store.create("one", owner="acct", max_owned=3)
    results = await asyncio.gather(*(store.create(f"k{n}", owner="acct", max_owned=3) for n in range(10)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 2
    assert all(isinstance(r, KeyLimitError) for r in results if isinstance(r, Exception))
    assert len(await store.owned("acct")) == 3
    assert await redis.hlen(store.k.ids) == 3  # refused ids were not left behind


async def test_revoked_keys_listed_on_the_profile_are_bounded(redis: Any, names: Names) -> None:
    from api.access.keys import REVOKED_SHOWN
    store = KeyStore(redis, names)
    for n in range(REVOKED_SHOWN + 5):
        record, _ = await store.create(f"k{n}", owner="churn", max_owned=2)
        await store.revoke(record.id)
    kept, _ = await store.create("live", owner="churn", max_owned=2)
    owned = await store.owned("churn")
    assert len(owned) == REVOKED_SHOWN + 1 and [r.id for r in owned if not r.revoked] == [kept.id]
    assert "k0" not in {r.name for r in owned}  # the oldest revoked ones left the list


# --- the Profile reads usage once, however many keys ------------------------------------------------------


def command_calls(url: str) -> dict[str, int]:
    client = sync_redis.Redis.from_url(url)
    try:
        return command_counts(client)
    finally:
        client.close()


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis of this test's own: its command counts are this gateway's alone."""
    server = RedisServer().start()
    yield server.url
    server.stop()


def test_the_profile_reads_usage_once_however_many_keys(own_redis: str, fake_openai: tuple[OpenAIFakeState, str],
                                                        tmp_path: Path) -> None:
    with GatewayHarness.from_env(accounts_env(own_redis, fake_openai[1], tmp_path)) as gw:
        profile_reads(gw)


def profile_reads(gw: GatewayHarness) -> None:
    browser = Browser(gw.url)
    first = keys_in(browser.join("hoarder@example.org").text)[0]
    second = keys_in(browser.submit("/profile", "/profile/keys", {"name": "second"}).text)
    second_key = [k for k in second if k != first][0]
    for key in (first, second_key):
        answer = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                            json={"model": PAID, "messages": MESSAGES}, timeout=20)
        assert answer.status_code == 200

    async def more_keys() -> str:
        redis = connect(gw.settings.redis_url)
        try:
            store = KeyStore(redis, Names(gw.settings.namespace))
            owner = (await store.lookup(first)).owner  # type: ignore[union-attr]
            for n in range(300):  # an account from before the bound: created behind the pages' back
                await store.create(f"bulk{n}", owner=owner)
            return owner or ""
        finally:
            await redis.aclose()

    gw.run(more_keys(), timeout=60)
    assert wait_until(lambda: "gpt-4o" in browser.get("/profile").text, 30)  # the worker's batched write
    before = command_calls(gw.settings.redis_url or "")
    page = browser.get("/profile")
    after = command_calls(gw.settings.redis_url or "")
    assert page.status_code == 200
    hgetall = after.get("hgetall", 0) - before.get("hgetall", 0)
    assert hgetall < 100, hgetall  # 30 days of the account's totals (+ background loops); per key: 9,000+
    row = next(line for line in page.text.split("<tr>") if "<code>openai/gpt-4o</code>" in line)
    assert '<td class="num">2</td>' in row  # both keys' requests, summed


# --- uploads refused before they are read ---------------------------------------------------------------


@pytest.fixture
def read_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bytes of upload bodies the route read (its bounded reader, counted)."""
    counted: list[int] = []
    bounded = uploads._bounded

    async def counting(request: Any, limit: int, what: str, field: str) -> AsyncIterator[bytes]:
        counted.append(0)
        async for chunk in bounded(request, limit, what, field):
            counted[-1] += len(chunk)
            yield chunk

    monkeypatch.setattr(uploads, "_bounded", counting)
    return counted


def upload(gw: GatewayHarness, model: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {"authorization": ""}
    audio = b"\x00" * (25 * 1024 * 1024 - 4096)
    return httpx.post(gw.url + "/v1/audio/transcriptions", headers=headers, timeout=60,
                      data={"model": model}, files={"file": ("big.wav", audio, "audio/wav")})


def test_uploads_of_a_refused_key_or_model_are_not_read(start: Callable[..., GatewayHarness],
                                                        read_bytes: list[int]) -> None:
    gw = start()
    for _ in range(8):
        refused = upload(gw, "whisper-1", "mb-" + "u" * 43)
        assert refused.status_code == 401 and refused.json()["error_type"] == "authentication_required"
    assert read_bytes == []  # not a byte: the key was refused before the body was opened
    paid = upload(gw, "whisper-1", None)
    assert paid.status_code == 401 and paid.json()["error_type"] == "paid_model_auth_required"
    key = keys_in(Browser(gw.url).join("audio@example.org").text)[0]
    unknown = upload(gw, "nosuch/transcriber", key)
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "model_not_found"
    assert len(read_bytes) == 2 and max(read_bytes) < 1024 * 1024, read_bytes  # the fields and a chunk at most


# --- the admin key -------------------------------------------------------------------------------------


def test_a_short_admin_key_is_refused_at_start_up(redis_url: str) -> None:
    env = env_for(redis_url, MEGABRAIN_ADMIN_KEY="pin-7391", PORT="0", HOST="127.0.0.1")
    started = subprocess.run([sys.executable, "-m", "api.cli.main", "web"], env=env, capture_output=True,
                             timeout=60, text=True)
    assert started.returncode != 0
    assert "MEGABRAIN_ADMIN_KEY is 8 characters long; it must have at least 32" in started.stderr
    assert "pin-7391" not in started.stderr
    with pytest.raises(ConfigError):
        from api.gateway import Gateway
        Gateway(Settings(redis_url=redis_url, admin_key="pin-7391", secret=TEST_SECRET))


def test_wrong_admin_keys_are_limited_per_address_and_logged(start: Callable[..., GatewayHarness],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gw = start(hops=1)
    guesser = {"x-forwarded-for": "192.0.2.99"}
    guesses = [httpx.get(gw.url + "/admin/keys", headers={**guesser, "authorization": f"Bearer guess-{n:04d}"})
               for n in range(10)]
    assert [g.status_code for g in guesses] == [401] * 10
    blocked = httpx.get(gw.url + "/admin/keys", headers={**guesser, "authorization": f"Bearer {ADMIN_KEY}"})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0  # even the right key, now
    operator = {"x-forwarded-for": "198.51.100.200", "authorization": f"Bearer {ADMIN_KEY}"}
    for _ in range(15):  # right keys do not use up the allowance
        assert httpx.get(gw.url + "/admin/keys", headers=operator).status_code == 200
    assert "admin key refused: wrong or missing key ip=192.0.2.99 path=/admin/keys" in caplog.text
    assert "guess-0" not in caplog.text and ADMIN_KEY not in caplog.text


# --- emails: keyed index, no plain text, and the migration of older stores ----------------------------


def test_older_accounts_are_migrated_to_the_keyed_index(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                                                        tmp_path: Path) -> None:
    env = accounts_env(redis_url, fake_openai[1], tmp_path)
    names = Names(env["MEGABRAIN_NAMESPACE"])

    async def legacy_account() -> None:  # as the store held it before: email in the record, a bare SHA-256
        redis = connect(redis_url)
        try:
            hashed = await AccountStore(redis, names, b"x" * 32, HashingSlots()).slots.run(
                __import__("argon2").PasswordHasher().hash, PASSWORD)
            record = {"id": "0123456789abcdef", "email": "old@example.org", "password_hash": hashed,
                      "created": time.time()}
            await redis.set(names.account("0123456789abcdef"), msgspec.msgpack.encode(record))
            await redis.set(names.account_email_legacy(hashlib.sha256(b"old@example.org").hexdigest()),
                            "0123456789abcdef")
        finally:
            await redis.aclose()

    asyncio.run(legacy_account())
    with GatewayHarness.from_env(env, pools=()) as gw:
        assert Browser(gw.url).login("old@example.org").status_code == 303  # found by the keyed index
        client = sync_redis.Redis.from_url(redis_url)
        try:
            assert client.get(names.account_email(email_key(TEST_SECRET.encode(), "old@example.org"))) \
                == b"0123456789abcdef"
            assert client.keys(names.account_email_legacy("*")) == []
            raw = client.get(names.account("0123456789abcdef")) or b""
            assert b"old@example.org" not in raw and "o•••@e•••.org".encode() in raw
        finally:
            client.close()


async def test_the_email_index_is_keyed_by_the_server_secret(redis: Any, names: Names) -> None:
    one = AccountStore(redis, names, b"a" * 32, HashingSlots())
    other = AccountStore(redis, names, b"b" * 32, HashingSlots())
    assert await one.create("Someone@Example.org", PASSWORD) is not None
    assert (await one.authenticate("someone@example.org", PASSWORD)) is not None
    assert await other.find("someone@example.org") is None  # another secret finds nothing: not a bare hash
    assert email_key(b"a" * 32, "x@example.org") != hashlib.sha256(b"x@example.org").hexdigest()


def test_the_secret_is_configured_or_kept_beside_the_embedded_store(tmp_path: Path) -> None:
    assert server_secret(Settings(secret="s" * 40, redis_url="redis://elsewhere")) == b"s" * 40
    with pytest.raises(ConfigError, match="MEGABRAIN_SECRET is not set"):
        server_secret(Settings(redis_url="redis://elsewhere:6379/0"))
    store = tmp_path / "store"
    store.mkdir()
    embedded = Settings(redis_url=f"unix://{store}/redis.sock")
    first = server_secret(embedded)
    assert len(first) >= 32 and server_secret(embedded) == first  # created once, then read
    assert os.stat(store / SECRET_FILE).st_mode & 0o777 == 0o600
