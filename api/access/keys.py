"""API keys: created once, shown once, stored only as a hash; plus per-key usage accounting.

Redis layout (all under the deployment's namespace):

    apikey:h:<sha256 hex>    msgpack KeyRecord             lookup by presented key: one GET
    apikey:ids               hash  id -> sha256 hex        list / revoke by id
    apikey:revoked           set of revoked ids            read by the rate-limit script on every request
    apikey:used              hash  id -> epoch seconds     last use, written by the rate-limit script
    account:keys:<account>   set of key ids                the keys a signed-in user holds (at most
                                                           ``keys_per_account``; revoking removes one)
    account:revoked:<account> zset id -> revoked at        its revoked keys, the newest ``REVOKED_SHOWN`` kept
    usage:<id>:<YYYY-MM-DD>  hash  "<model>|<field>" -> n  requests, tokens, cost per UTC day and model
    spend:<id>:<YYYY-MM>     float                         month-to-date cost, read for budgets

The usage and spend counters are written by the worker after a served request; their layout lives in
common/usage.py so the worker need not import the web tier.

Keys carry 256 bits of randomness, so a plain SHA-256 is enough: nobody can brute-force a preimage, and
whoever reads Redis learns nothing usable. Neither a key nor its hash is ever logged.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis

from common.names import Names
from common.usage import USAGE_FIELDS, account_usage_key, spend_key, usage_key, utc_day, utc_month

log = logging.getLogger(__name__)

KEY_PREFIX = "mb-"
REVOKED_SHOWN = 20  # revoked keys an account's Profile lists (the operator's listing has them all)


class KeyLimitError(ValueError):
    """The account holds as many keys as it may (``Limits.keys_per_account``)."""


class KeyRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    prefix: str  # first characters of the key, for people to recognise it in a list
    created: float  # epoch seconds
    rpm: int | None = None
    monthly_budget: float | None = None  # USD
    revoked: bool = False
    revoked_at: float | None = None
    owner: str | None = None  # the account that created it on its Profile page; None for operator keys
    last_used: float | None = None  # filled in by KeyStore.list(); not stored in the record


class UsageRow(msgspec.Struct, kw_only=True):
    day: str  # YYYY-MM-DD, UTC
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: str = "0"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_plaintext_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(token: str) -> bool:
    """Only our own format is worth a Redis lookup; anything else is unknown without asking."""
    return token.startswith(KEY_PREFIX) and 20 <= len(token) <= 200


class KeyNames:
    """Redis key names of the key store, derived from the deployment's Names."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.ids = names.key("apikey:ids")
        self.revoked = names.key("apikey:revoked")
        self.used = names.key("apikey:used")

    def record(self, key_hash: str) -> str:
        return self.names.key(f"apikey:h:{key_hash}")

    def usage(self, key_id: str, day: str) -> str:
        return usage_key(self.names, key_id, day)

    def spend(self, key_id: str, month: str) -> str:
        return spend_key(self.names, key_id, month)


_record_decoder = msgspec.msgpack.Decoder(KeyRecord)


class KeyStore:
    """Create, list, revoke and look up keys. Used by the CLI, the admin API and (via KeyCache) requests."""

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis = redis
        self.k = KeyNames(names)

    async def create(
        self, name: str, rpm: int | None = None, monthly_budget: float | None = None, *, owner: str | None = None,
        max_owned: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key. The plaintext is returned once and exists nowhere else afterwards.

        With ``owner`` and ``max_owned``, an account already holding that many keys gets ``KeyLimitError``
        (checked and claimed in one transaction, so concurrent creations cannot pass it together)."""
        plaintext = new_plaintext_key()
        key_hash = hash_key(plaintext)
        while True:
            key_id = secrets.token_hex(4)
            if await self.redis.hsetnx(self.k.ids, key_id, key_hash):
                break
        if owner is not None and max_owned is not None and not await self._claim_slot(owner, key_id, max_owned):
            await self.redis.hdel(self.k.ids, key_id)
            raise KeyLimitError(f"An account may hold {max_owned} keys at once; revoke one to make another.")
        record = KeyRecord(
            id=key_id,
            name=name,
            prefix=plaintext[:8],
            created=time.time(),
            rpm=rpm,
            monthly_budget=monthly_budget,
            owner=owner,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.k.record(key_hash), msgspec.msgpack.encode(record))
            if owner is not None:
                pipe.sadd(self.k.names.account_keys(owner), key_id)
            await pipe.execute()
        log.info("api key created id=%s name=%s owner=%s", key_id, name, owner or "-")
        return record, plaintext

    async def _claim_slot(self, owner: str, key_id: str, max_owned: int) -> bool:
        """Add ``key_id`` to the account's keys unless that makes more than ``max_owned``. MULTI/EXEC runs
        the add and the count as one, so of two concurrent creations at the limit at most one stays."""
        held = self.k.names.account_keys(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(held, key_id).scard(held)
            _, count = await pipe.execute()
        if count <= max_owned:
            return True
        await self.redis.srem(held, key_id)
        return False

    async def lookup(self, plaintext: str) -> KeyRecord | None:
        """The record of a presented key (revoked ones included), or None. One GET."""
        if not looks_like_key(plaintext):
            return None
        raw = await self.redis.get(self.k.record(hash_key(plaintext)))
        return _record_decoder.decode(raw) if raw else None

    async def get(self, key_id: str) -> KeyRecord | None:
        key_hash = await self.redis.hget(self.k.ids, key_id)
        if not key_hash:
            return None
        raw = await self.redis.get(self.k.record(_text(key_hash)))
        if not raw:
            return None
        record = _record_decoder.decode(raw)
        used = await self.redis.hget(self.k.used, key_id)
        record.last_used = float(used) if used else None
        return record

    async def owned(self, owner: str) -> list[KeyRecord]:
        """The keys an account holds and its latest revoked ones, oldest first (its Profile page): at most
        ``keys_per_account`` + ``REVOKED_SHOWN``, in three round trips."""
        held, revoked = self.k.names.account_keys(owner), self.k.names.account_revoked_keys(owner)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(held).zrange(revoked, 0, -1)
            active, gone = await pipe.execute()
        key_ids = sorted({_text(k) for k in (*active, *gone)})
        if not key_ids:
            return []
        hashes = await self.redis.hmget(self.k.ids, key_ids)
        records = [r for r in await self._records({i: _text(h) for i, h in zip(key_ids, hashes) if h})
                   if r.owner == owner]
        held_ids = {_text(k) for k in active}
        for record in records:  # revoked before revoking moved keys out of the account's set
            if record.revoked and record.id in held_ids:
                await self._move_to_revoked(owner, record)
        return records

    async def _records(self, ids: dict[str, str]) -> list[KeyRecord]:
        """The records of ``{key id: key hash}`` with last use filled in, oldest first, in one round trip."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_hash in ids.values():
                pipe.get(self.k.record(key_hash))
            pipe.hmget(self.k.used, list(ids))
            results = await pipe.execute()
        used = {key_id: float(v) for key_id, v in zip(ids, results[-1]) if v}
        records = []
        for raw in results[:-1]:
            if raw:
                record = _record_decoder.decode(raw)
                record.last_used = used.get(record.id)
                records.append(record)
        return sorted(records, key=lambda r: r.created)

    async def list(self) -> list[KeyRecord]:
        """Every key, oldest first, with last use filled in. Two round trips whatever the count."""
        ids = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self.k.ids)).items()}
        return await self._records(ids)

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key everywhere at once: the revoked set is checked by every request's limit script."""
        key_hash = await self.redis.hget(self.k.ids, key_id)
        if not key_hash:
            return False
        record_key = self.k.record(_text(key_hash))
        raw = await self.redis.get(record_key)
        record = _record_decoder.decode(raw) if raw else None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.k.revoked, key_id)
            if record is not None and not record.revoked:
                record.revoked, record.revoked_at = True, time.time()
                pipe.set(record_key, msgspec.msgpack.encode(record))
            await pipe.execute()
        if record is not None and record.owner is not None:
            await self._move_to_revoked(record.owner, record)
        log.info("api key revoked id=%s", key_id)
        return True

    async def _move_to_revoked(self, owner: str, record: KeyRecord) -> None:
        """A revoked key leaves the keys its account holds (freeing a slot) for its bounded revoked list."""
        revoked = self.k.names.account_revoked_keys(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(self.k.names.account_keys(owner), record.id)
            pipe.zadd(revoked, {record.id: record.revoked_at or time.time()})
            pipe.zremrangebyrank(revoked, 0, -REVOKED_SHOWN - 1)
            await pipe.execute()

    async def usage(self, key_id: str, days: int = 30, now: float | None = None) -> list[UsageRow]:
        """Per-day, per-model usage of the last ``days`` UTC days (today included), newest first."""
        return await self._usage(lambda day: self.k.usage(key_id, day), days, now)

    async def account_usage(self, account_id: str, days: int = 30, now: float | None = None) -> list[UsageRow]:
        """The same, summed over an account's keys (written so by the worker): one read however many keys."""
        return await self._usage(lambda day: account_usage_key(self.k.names, account_id, day), days, now)

    async def _usage(self, key_of: Callable[[str], str], days: int, now: float | None) -> list[UsageRow]:
        base = time.time() if now is None else now
        day_names = [utc_day(base - i * 86400) for i in range(max(1, days))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in day_names:
                pipe.hgetall(key_of(day))
            results = await pipe.execute()
        rows: list[UsageRow] = []
        for day, fields in zip(day_names, results):
            rows.extend(_usage_rows(day, fields))
        return rows

    async def month_spend(self, key_id: str, now: float | None = None) -> float:
        raw = await self.redis.get(self.k.spend(key_id, utc_month(now)))
        return float(raw) if raw else 0.0

    async def month_spends(self, key_ids: list[str], now: float | None = None) -> dict[str, float]:
        """Month-to-date cost of many keys in one round trip (for listings)."""
        if not key_ids:
            return {}
        month = utc_month(now)
        raws = await self.redis.mget([self.k.spend(key_id, month) for key_id in key_ids])
        return {key_id: float(raw) if raw else 0.0 for key_id, raw in zip(key_ids, raws)}


def _usage_rows(day: str, fields: dict[Any, Any]) -> list[UsageRow]:
    by_model: dict[str, dict[str, str]] = {}
    for raw_field, raw_value in fields.items():
        model, _, name = _text(raw_field).rpartition("|")
        if name in USAGE_FIELDS:
            by_model.setdefault(model, {})[name] = _text(raw_value)
    return [
        UsageRow(
            day=day,
            model=model,
            requests=int(values.get("requests", 0)),
            prompt_tokens=int(values.get("prompt_tokens", 0)),
            completion_tokens=int(values.get("completion_tokens", 0)),
            cost=values.get("cost", "0"),
        )
        for model, values in sorted(by_model.items())
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class KeyCache:
    """Per-process cache of key lookups, so a request with a known key costs no extra round trip.

    Why a cache TTL does not delay revocation: the rate-limit script that runs on every keyed request
    checks ``apikey:revoked`` inside the same call (see api/access/limits.py), so a revoke is seen by every
    process on its very next request with no extra round trip and no pub/sub. The TTL only bounds how
    stale the rpm/budget fields may be. Unknown keys are cached too (a random key cannot become valid
    later), with a size cap so junk keys cannot grow memory without bound.
    """

    def __init__(self, store: KeyStore, ttl: float = 5.0, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self._touched: dict[str, float] = {}

    async def _claim_slot(self, owner: str, key_id: str, max_owned: int) -> bool:
        """Add ``key_id`` to the account's keys unless that makes more than ``max_owned``. MULTI/EXEC runs
        the add and the count as one, so of two concurrent creations at the limit at most one stays."""
        held = self.k.names.account_keys(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(held, key_id).scard(held)
            _, count = await pipe.execute()
        if count <= max_owned:
            return True
        await self.redis.srem(held, key_id)
        return False

    async def lookup(self, plaintext: str) -> KeyRecord | None:
        if not looks_like_key(plaintext):
            return None
        cache_key = hash_key(plaintext)
        now = time.monotonic()
        hit = self._entries.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.store.lookup(plaintext)
        self._entries[cache_key] = (now + self.ttl, record)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return record

    def forget(self, plaintext: str) -> None:
        self._entries.pop(hash_key(plaintext), None)

    def touch_due(self, key_id: str, every: float = 60.0) -> bool:
        """True at most once per ``every`` seconds per key: then the limit script records last use."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -every) < every:
            return False
        if len(self._touched) >= self.max_entries:
            self._touched.clear()
        self._touched[key_id] = now
        return True
