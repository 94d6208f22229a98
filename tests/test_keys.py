"""API key store, lookup cache and usage accounting, against the suite's real Redis."""

from __future__ import annotations

import time

import pytest

from api.access.keys import KeyCache, KeyNames, KeyStore, hash_key
from common.settlement import record_usage
from common.names import Names



async def test_create_then_lookup(store: KeyStore) -> None:
    record, plaintext = await store.create("ci", rpm=10, monthly_budget=5.0)
    assert plaintext.startswith("mb-") and len(plaintext) >= 40
    assert record.prefix == plaintext[:8]
    found = await store.lookup(plaintext)
    assert found is not None
    assert (found.id, found.name, found.rpm, found.monthly_budget, found.revoked) == (
        record.id, "ci", 10, 5.0, False,
    )


async def test_keys_are_distinct(store: KeyStore) -> None:
    (a, ka), (b, kb) = await store.create("a"), await store.create("b")
    assert a.id != b.id and ka != kb


async def test_unknown_and_foreign_tokens_are_not_found(store: KeyStore) -> None:
    await store.create("x")
    assert await store.lookup("mb-" + "A" * 43) is None
    assert await store.lookup("sk-not-ours-at-all-0123456789") is None
    assert await store.lookup("") is None


async def test_list_and_revoke(store: KeyStore) -> None:
    first, key1 = await store.create("first")
    second, _ = await store.create("second")
    listed = await store.list()
    assert [r.id for r in listed] == [first.id, second.id]
    assert [r.name for r in listed] == ["first", "second"]
    assert await store.revoke(first.id) is True
    assert await store.revoke("nope") is False
    found = await store.lookup(key1)
    assert found is not None and found.revoked and found.revoked_at
    by_id = {r.id: r for r in await store.list()}
    assert by_id[first.id].revoked and not by_id[second.id].revoked


async def test_only_the_hash_is_stored(redis, names: Names, store: KeyStore) -> None:  # type: ignore[no-untyped-def]
    record, plaintext = await store.create("secret-check", rpm=5)
    await record_usage(redis, names, record.id, "m/x", 1, 2, "0.01")
    await store.revoke(record.id)
    dump: list[bytes] = []
    async for key in redis.scan_iter(match=f"{names.ns}:*"):
        dump.append(key)
        kind = (await redis.type(key)).decode()
        if kind == "string":
            dump.append(await redis.get(key))
        elif kind == "hash":
            for f, v in (await redis.hgetall(key)).items():
                dump += [f, v]
        elif kind == "set":
            dump += list(await redis.smembers(key))
    blob = b"\n".join(dump)
    assert hash_key(plaintext).encode() in blob  # the scan does see what is stored
    assert plaintext.encode() not in blob
    assert plaintext[3:].encode() not in blob


async def test_usage_per_day_and_model(redis, names: Names, store: KeyStore) -> None:  # type: ignore[no-untyped-def]
    record, _ = await store.create("u")
    now = time.time()
    await record_usage(redis, names, record.id, "openai/gpt-4o-mini", 10, 5, "0.001", now)
    await record_usage(redis, names, record.id, "openai/gpt-4o-mini", 20, 7, "0.002", now)
    await record_usage(redis, names, record.id, "anthropic/claude|odd", 1, 1, "0.5", now)
    await record_usage(redis, names, record.id, "openai/gpt-4o-mini", 3, 3, "0.1", now - 2 * 86400)
    today = await store.usage(record.id, days=1, now=now)
    rows = {r.model: r for r in today}
    assert set(rows) == {"openai/gpt-4o-mini", "anthropic/claude|odd"}
    mini = rows["openai/gpt-4o-mini"]
    assert (mini.requests, mini.prompt_tokens, mini.completion_tokens) == (2, 30, 12)
    assert float(mini.cost) == pytest.approx(0.003)
    month = await store.usage(record.id, days=30, now=now)
    assert len(month) == 3
    assert len({r.day for r in month}) == 2
    ttl = await redis.ttl(KeyNames(names).usage(record.id, today[0].day))
    assert 0 < ttl <= 400 * 86400


async def test_month_spend(redis, names: Names, store: KeyStore) -> None:  # type: ignore[no-untyped-def]
    record, _ = await store.create("s")
    assert await store.month_spend(record.id) == 0.0
    await record_usage(redis, names, record.id, "a", 1, 1, "0.25")
    await record_usage(redis, names, record.id, "b", 1, 1, "0.5")
    assert await store.month_spend(record.id) == pytest.approx(0.75)


async def test_cache_serves_repeat_lookups(redis, names: Names, store: KeyStore) -> None:  # type: ignore[no-untyped-def]
    record, plaintext = await store.create("c")
    cached = KeyCache(store, ttl=60)
    uncached = KeyCache(store, ttl=0)
    assert (await cached.lookup(plaintext)).id == record.id  # type: ignore[union-attr]
    assert (await uncached.lookup(plaintext)).id == record.id  # type: ignore[union-attr]
    await redis.delete(KeyNames(names).record(hash_key(plaintext)))
    assert (await cached.lookup(plaintext)).id == record.id  # type: ignore[union-attr]
    assert await uncached.lookup(plaintext) is None
    cached.forget(plaintext)
    assert await cached.lookup(plaintext) is None


async def test_cache_is_bounded(store: KeyStore) -> None:
    cache = KeyCache(store, ttl=60, max_entries=2)
    for i in range(5):
        await cache.lookup(f"mb-unknown-key-number-{i:04d}-xxxxxxxx")
    assert len(cache._entries) == 2


def test_touch_is_due_once_per_interval(store: KeyStore) -> None:
    cache = KeyCache(store)
    assert cache.touch_due("k1") is True
    assert cache.touch_due("k1") is False
    assert cache.touch_due("k2") is True
    assert cache.touch_due("k1", every=0) is True
