"""Prepaid credits: an account's balance, kept as a ledger of entries that are never edited.

Why integers: money here is counted in **nanodollars** (10⁻⁹ USD), so every sum is exact (HINCRBY), and
a price of $0.15 per million tokens is still a whole number per token. Amounts enter and leave as
``Decimal`` USD (``nanos``, ``usd``); Redis never sees a float for a balance.

    credits:<account>         hash  balance, held, total_credits, total_usage (nanodollars)
    credits:holds:<account>   zset  "<request id>|<nanodollars>" each paid request's reservation, scored by
                                    its deadline (ms): its ``held`` is their sum
    credits:ledger:<account>  list  JSON entries, oldest first: id, kind, amount (nanodollars, signed),
                                    time, note; a usage entry also its model
    credits:entry:<entry id>  the account an entry with a caller-chosen id went to (SET NX): a grant or
                                    top-up applied twice under one id (a retried command, a webhook
                                    delivered again) is applied once
    credits:refunded          hash  "<payment id>" -> nanodollars refunded so far (``refund``: Stripe
                                    reports a charge's refunds cumulatively, so replays and reordered
                                    events debit each refunded cent once)

Invariants, each kept by the one script that writes both sides: ``balance = total_credits - total_usage``
= the sum of the ledger's amounts; a usage entry is written by the request's settlement
(``common/settlement.py``) in the same script as its bill and published answer, so it exists exactly once
per answered request. Spending never takes a balance below zero: admission holds each paid request's worst
case against ``balance - held`` in its one script (``api/access/limits.py``), and the settlement charges at
most what is left (a shortfall, which only a worst case that was not one could cause, is counted as
unbilled work, never as a negative balance). Operator adjustments may not take it below zero either.
The one exception is a refund of a top-up whose credit was already spent: the money went back, so the
balance shows the debt (below zero) and paid requests are refused until it is topped up again.

Kinds: ``grant`` (operator, sign-up credit), ``topup`` (a paid Stripe Checkout), ``refund`` (negative),
``adjust`` (operator, either sign), ``usage`` (negative: a request's cost).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from common.mux import Script, mux_of
from common.names import Names

NANOS_PER_USD = 10**9
MAX_NANOS = 2**53 - 1  # Lua numbers are doubles: integers are exact up to here (about $9 million)
KINDS = ("grant", "topup", "refund", "adjust", "usage")
CREDIT_KINDS = frozenset({"grant", "topup", "refund", "adjust"})  # what moves total_credits


class LedgerError(ValueError):
    """An entry that cannot be applied; the message says why, for the operator or the page."""


def nanos(usd: Decimal | str | int, *, rounding: str = ROUND_HALF_UP) -> int:
    """USD as whole nanodollars (``rounding`` for what lies below one: a reservation rounds up)."""
    try:
        value = Decimal(str(usd))
    except InvalidOperation:
        raise LedgerError(f"not an amount of USD: {usd!r}") from None
    if not value.is_finite():
        raise LedgerError(f"not an amount of USD: {usd!r}")
    result = int((value * NANOS_PER_USD).to_integral_value(rounding=rounding))
    if abs(result) > MAX_NANOS:
        raise LedgerError(f"amount out of range: {usd!r}")
    return result


def reservation_nanos(usd: Decimal) -> int:
    """What a request's worst case holds: rounded up, so the hold always covers the bill."""
    return nanos(usd, rounding=ROUND_CEILING)


def usd(amount_nanos: int) -> Decimal:
    """Nanodollars back as exact USD."""
    return (Decimal(amount_nanos) / NANOS_PER_USD).normalize() if amount_nanos else Decimal(0)


def credits_key(names: Names, account: str) -> str:
    return names.key(f"credits:{account}")


def credit_holds_key(names: Names, account: str) -> str:
    return names.key(f"credits:holds:{account}")


def ledger_key(names: Names, account: str) -> str:
    return names.key(f"credits:ledger:{account}")


def entry_key(names: Names, entry_id: str) -> str:
    return names.key(f"credits:entry:{entry_id}")


# Return one credit hold, or every overdue one (KEYS-free, shared by admission, settlement and close):
# ZREM decides, so a hold is returned once whoever gets there first.
RETURN_CREDIT_HOLD = """
local function return_credit_hold(holds, account, member)
  if member == '' or redis.call('ZREM', holds, member) == 0 then return end
  redis.call('HINCRBY', account, 'held', -tonumber(string.match(member, '|(%d+)$')))
end
local function return_overdue_credits(holds, account, now_ms)
  local overdue = redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms, 'LIMIT', 0, 100)
  for i = 1, #overdue do return_credit_hold(holds, account, overdue[i]) end
end
"""

# KEYS: the account's credits hash, its ledger, the entry's id marker (or a placeholder when ARGV[4] = '0')
# ARGV: amount (signed nanodollars), '1' when it moves total_credits (else total_usage, negated), the entry
#       (JSON), '1' when the id must be unique, the account id
# Reply: {1, balance} applied; {0, balance} the id was applied already; {-1, balance} it would go below zero.
_APPLY = """
local amount = tonumber(ARGV[1])
if ARGV[4] == '1' then
  local owner = redis.call('GET', KEYS[3])
  if owner then return {0, tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')} end
end
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')
if amount < 0 and balance + amount < 0 then return {-1, balance} end
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[5]) end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'total_credits', amount)
else
  redis.call('HINCRBY', KEYS[1], 'total_usage', -amount)
end
balance = redis.call('HINCRBY', KEYS[1], 'balance', amount)
redis.call('RPUSH', KEYS[2], ARGV[3])
return {1, balance}
"""
APPLY = Script(_APPLY)

# KEYS: the account's credits hash, its ledger, the refunded-so-far hash. ARGV: payment id, refunded so far
# (nanodollars, as the payment provider reports it), the entry's JSON up to its amount.
# Reply: {1, balance} debited the difference; {0, balance} nothing new (a replay, or an older report).
REFUND = Script("""
local before = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local total = tonumber(ARGV[2])
if total <= before then return {0, tonumber(redis.call('HGET', KEYS[1], 'balance') or '0')} end
local delta = total - before
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'total_credits', -delta)
local balance = redis.call('HINCRBY', KEYS[1], 'balance', -delta)
redis.call('RPUSH', KEYS[2], ARGV[3] .. string.format('%d', -delta) .. '}')
return {1, balance}
""")


@dataclass(frozen=True)
class Entry:
    """One ledger entry, as stored and as shown."""

    id: str
    kind: str
    amount: int  # nanodollars, signed
    time: float  # epoch seconds
    note: str = ""
    model: str = ""  # usage entries: the endpoint that served

    @property
    def usd(self) -> Decimal:
        return usd(self.amount)

    def encode(self) -> str:
        entry: dict[str, Any] = {"id": self.id, "kind": self.kind, "amount": self.amount,
                                 "time": round(self.time, 3), "note": self.note}
        if self.model:
            entry["model"] = self.model
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "amount": str(self.usd), "time": self.time, "note": self.note,
                "model": self.model or None}

    def open_amount(self) -> str:
        """The entry's JSON up to its amount, for a script that decides the amount to append it and ``}``."""
        return self.encode()[:-1].replace(f',"amount":{self.amount}', "") + ',"amount":'

    @classmethod
    def decode(cls, raw: bytes | str) -> "Entry":
        data = json.loads(raw)
        return cls(id=str(data["id"]), kind=str(data["kind"]), amount=int(data["amount"]),
                   time=float(data["time"]), note=str(data.get("note", "")), model=str(data.get("model", "")))


@dataclass(frozen=True)
class Balance:
    """An account's money: what it was credited, what it spent, what is held by requests in flight."""

    total_credits: int = 0
    total_usage: int = 0
    balance: int = 0
    held: int = 0

    @property
    def available(self) -> int:
        """What a new request may still reserve."""
        return max(0, self.balance - self.held)

    def as_json(self, account: str) -> dict[str, Any]:
        """Exact USD decimal strings (the CLI's ``--json`` and the admin API)."""
        return {"account": account, "balance": str(usd(self.balance)), "held": str(usd(self.held)),
                "available": str(usd(self.available)), "total_credits": str(usd(self.total_credits)),
                "total_usage": str(usd(self.total_usage))}


@dataclass(frozen=True)
class Applied:
    """``Ledger.apply``'s answer: ``applied`` False with ``duplicate`` when the id was used already."""

    applied: bool
    duplicate: bool
    balance: int


class Ledger:
    """Reads and writes of the credits ledger (the operator's CLI, the admin API, pages, the webhook)."""

    def __init__(self, redis: Any, names: Names) -> None:
        self.redis = redis
        self.names = names

    async def apply(self, account: str, kind: str, amount: int, *, note: str = "", entry_id: str = "",
                    now: float | None = None) -> Applied:
        """Add one entry (``amount`` in signed nanodollars) and move the balance with it, atomically.

        ``entry_id`` given: the entry is applied once under that id, whatever retries (a replayed webhook
        event); else a fresh id. Refuses (``LedgerError``) an amount that would take the balance below
        zero, and a kind that is not a credit's (usage is written by the settlement only)."""
        if kind not in CREDIT_KINDS:
            raise LedgerError(f"kind must be one of {', '.join(sorted(CREDIT_KINDS))}")
        if amount == 0 or abs(amount) > MAX_NANOS:
            raise LedgerError("the amount must be non-zero and at most $9,000,000")
        unique = bool(entry_id)
        entry = Entry(id=entry_id or f"{kind}-{secrets.token_hex(8)}", kind=kind, amount=amount,
                      time=time.time() if now is None else now, note=note[:500])
        keys = [credits_key(self.names, account), ledger_key(self.names, account),
                entry_key(self.names, entry.id) if unique else self.names.key("credits:entry:none")]
        reply = await mux_of(self.redis).evalsha(APPLY, keys, [amount, "1", entry.encode(), "1" if unique else "0",
                                                              account])
        status, balance = int(reply[0]), int(reply[1])
        if status < 0:
            raise LedgerError(f"that would take the balance of {format_usd(balance)} below zero")
        return Applied(status == 1, status == 0, balance)

    async def refund(self, account: str, payment_id: str, refunded_so_far: int, *, note: str = "",
                     now: float | None = None) -> Applied:
        """Debit what ``payment_id`` has had refunded beyond what was debited already (``refunded_so_far``
        is cumulative, as the payment provider reports it), as one ``refund`` entry."""
        prefix = Entry(id=f"refund-{payment_id}-{refunded_so_far}", kind="refund", amount=0,
                       time=time.time() if now is None else now, note=note[:500]).open_amount()
        keys = [credits_key(self.names, account), ledger_key(self.names, account), self.names.key("credits:refunded")]
        reply = await mux_of(self.redis).evalsha(REFUND, keys, [payment_id, refunded_so_far, prefix])
        return Applied(int(reply[0]) == 1, int(reply[0]) == 0, int(reply[1]))

    async def balance(self, account: str) -> Balance:
        raw = await self.redis.hgetall(credits_key(self.names, account))
        values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return Balance(total_credits=values.get("total_credits", 0), total_usage=values.get("total_usage", 0),
                       balance=values.get("balance", 0), held=max(0, values.get("held", 0)))

    async def entries(self, account: str, limit: int = 50) -> list[Entry]:
        """The newest ``limit`` entries, newest first."""
        raw = await self.redis.lrange(ledger_key(self.names, account), -limit, -1)
        return [Entry.decode(item) for item in reversed(raw)]

    async def all_entries(self, account: str) -> list[Entry]:
        """Every entry, oldest first (reconciling, the operator's ``credits ledger``)."""
        return [Entry.decode(item) for item in await self.redis.lrange(ledger_key(self.names, account), 0, -1)]


def format_usd(amount_nanos: int) -> str:
    """``$5.00``, ``$0.000123``: whole cents as cents, anything finer in full."""
    value = usd(amount_nanos)
    if value == value.quantize(Decimal("0.01")):
        return f"{'-' if value < 0 else ''}${abs(value):.2f}"
    return f"{'-' if value < 0 else ''}${format(abs(value), 'f')}"
