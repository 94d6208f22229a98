"""Settlement: the one atomic write that bills a request, and the fence that keeps it to one.

Why one script: the record that bills a request (usage counters, the month's spend, the budget
reservation's return, the generation record) must be in Redis *before* the client can see the answer's
end, and exactly once, whatever process dies when. So the worker's final event is published from inside
the script that writes them (``SETTLE``): the answer and its bill become visible together, or neither
does. A request the client does not get an answer for is never billed; its reservation goes back.

Contract (the worker calls ``settle``; the web tier calls ``supersede`` and ``close``):

- **The fence** ``fence:<request id>`` says which attempt of a request may still settle. Absent: attempt
  0 (or any later one: a withdrawn job never ran, so a re-queued attempt needs no fence move). A number
  ``n``: attempts below ``n`` are superseded (``supersede``: the web tier re-runs the request after its
  worker went silent). ``c``: the web tier ended the request itself (``close``: it failed it, or its client
  left). ``s<n>``: attempt ``n`` settled it; nothing else will. Every check and move of the fence happens
  inside the script that acts on it, so "settle" and "supersede"/"close" cannot both win.
- **Settling** (``SETTLE``, by the worker): refused when the fence names a later attempt, ``c``, another
  attempt's ``s``, or when Redis' clock is past the request's ``settle_by`` (its deadline plus
  ``SETTLE_GRACE``): then nothing is billed or published, and what the upstream did is counted under
  ``unbilled:<day>`` as ``superseded``/``closed``/``late`` (the operator paid for it). Otherwise the
  fence becomes ``s<attempt>``, the reservation's hold is returned, and either the request is billed
  (``bill``: usage, spend, generation record) or counted as ``failed`` unbilled work (``failed``: the
  client gets an error; a signed-in user's chat gets a record of the error, for the Activity page), and
  the final event is published. A ``bill`` whose PUBLISH reached no subscriber
  (the web process is gone: nobody can get this answer) is counted as ``unreceived`` instead of billed.
  Running it again for the same attempt does nothing and says so (``REPEAT``): a retry after a lost
  reply never bills twice.
- **Superseding** (``SUPERSEDE``, web tier, before a re-run): moves the fence to the new attempt, unless
  the request settled already, in which case its answer is on its way and is not re-run.
- **Closing** (``CLOSE``, web tier, when it fails a request or its client leaves): the fence becomes ``c``
  and the hold is returned, unless the request settled already. A stream its client left after its first
  token is not closed at once: its worker bills what the upstream did so far (``workers/jobs.py``), and
  the web tier's close follows later only in case it never does.

Reservations are **holds**: each admitted request's worst case is one member ``<request id>|<USD>`` of
``holds:<key id>``, scored by its own deadline (``settle_by``), and ``held:<key id>`` is their sum.
A hold is returned once, by whoever ZREMs it (settlement, close, or the admission script once its
deadline passed: ``RETURN_HOLD``/``RETURN_OVERDUE``, shared with ``api/access/limits.py``), so a hold a
lost worker kept ends at its own deadline however busy the key is, and the total never goes below zero
(it is deleted when the last hold goes, so it cannot drift from the holds it sums).

Requests in flight: each admitted request is a member (its request id) of its key's and its account's
``inflight`` sets (``api/access/limits.py``), which bound how many a tenant may have at once; settling and
closing both remove it, so whichever ends the request frees its place, once.

Prepaid credits (``common/ledger.py``): a signed-in user's key holds its worst case against its account's
balance too (``credits:holds:<account>``, summed in the credits hash's ``held``), returned by the same
three paths. The ``bill`` branch charges the real cost to the balance (at most what is left: a shortfall is
counted as unbilled ``shortfall``, never a negative balance) and appends the usage entry to the account's
ledger — inside the fence check, so it inherits "once, atomically, before the answer".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from common.ledger import RETURN_CREDIT_HOLD, Entry, credit_holds_key, credits_key, ledger_key, nanos
from common.mux import Script, mux_of
from common.names import Names, new_request_id
from common.usage import (ACTIVITY_KEEP, ANONYMOUS, GENERATION_TTL_SECONDS, USAGE_TTL_SECONDS,
                          account_inflight_key, account_usage_key, activity_member, held_key, holds_key,
                          inflight_key, spend_key, unbilled_key, usage_key, utc_day, utc_month)

SETTLE_GRACE = 60.0  # seconds past a request's deadline that its settlement (and its hold) may come
SETTLED_KEEP_MS = 30_000  # how long a first attempt's "settled" fence refuses a repeat (retries come in ms)
UNBILLED_TTL_SECONDS = 400 * 86400

SETTLED, REPEAT, REFUSED = 1, 2, 0

# A resumable answer's final event kept by its settlement: (its frames' entry id, '' = none; the frames;
# the closing marker's entry id; that marker, 'end' or 'cut'; the TTL in seconds) — workers/keeper.py
FinalKept = tuple[str, bytes, str, str, int]

# Return one hold (KEYS-free helpers, so the admission script can share them). ZREM decides: a hold is
# returned once, whoever gets there first; the total follows it, or goes when no hold is left.
RETURN_HOLD = """
local function return_hold(holds, total, member)
  if member == '' or redis.call('ZREM', holds, member) == 0 then return end
  if redis.call('ZCARD', holds) == 0 then
    redis.call('DEL', total)
  else
    redis.call('INCRBYFLOAT', total, '-' .. string.match(member, '|(.*)$'))
  end
end
local function return_overdue(holds, total, now_ms)
  local overdue = redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms, 'LIMIT', 0, 100)
  for i = 1, #overdue do return_hold(holds, total, overdue[i]) end
end
"""

_SETTLE = RETURN_HOLD + RETURN_CREDIT_HOLD + """
-- KEYS: fence, usage day hash, month spend, holds, held total, generation, unbilled day hash,
--       the account's usage day hash (a signed-in user's key; else unused), the key's and the
--       account's requests in flight (leases, api/access/limits.py), the account's activity, the
--       account's credits hash, its credit holds, its ledger (credits: common/ledger.py; else unused),
--       the answer's kept events and their owner record (a resumable stream's: workers/keeper.py)
-- ARGV: attempt, outcome ('bill'|'failed'), hold member ('' = none), settle-by (epoch ms), model,
--       prompt tokens, completion tokens, cost (USD decimal), generation record ('' = none),
--       reply channel ('' = the caller publishes), final event, '1' when the account's day counts too,
--       request id (its leases' member), the account's activity entry ('' = none), credit hold member
--       ('' = none), '1' when the account's credits pay, cost in nanodollars, the usage entry's JSON up to
--       its amount, the final frames' entry id ('' = none) and frames, the end marker's entry
--       id ('' = nothing kept), the kept events' TTL (seconds), the marker ('end'|'cut')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local attempt = tonumber(ARGV[1])
local settle_by = tonumber(ARGV[4])
-- claim the fence for this attempt, reading what it held (one command); put back below if refused.
-- A first attempt's claim only has to stop a repeat; a later one's outlives every attempt before it.
local keep = @SETTLED_KEEP_MS@
if attempt > 0 then keep = math.max(keep, settle_by - now_ms + 1000) end
local fence = redis.call('SET', KEYS[1], 's' .. ARGV[1], 'PX', keep, 'GET')
if fence == 's' .. ARGV[1] then return {2, 0} end  -- this attempt settled already: a repeat
local refused = nil
if fence then
  local head = string.sub(fence, 1, 1)
  if head == 's' then refused = 'superseded'
  elseif head == 'c' then refused = 'closed'
  elseif tonumber(fence) > attempt then refused = 'superseded' end
end
if not refused and now_ms > settle_by then refused = 'late' end

local function unbilled(reason)
  local prefix = reason .. '|' .. ARGV[5] .. '|'
  redis.call('HINCRBY', KEYS[7], prefix .. 'requests', 1)
  if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[7], prefix .. 'prompt_tokens', ARGV[6]) end
  if ARGV[7] ~= '0' then redis.call('HINCRBY', KEYS[7], prefix .. 'completion_tokens', ARGV[7]) end
  if ARGV[8] ~= '0' then redis.call('HINCRBYFLOAT', KEYS[7], prefix .. 'cost', ARGV[8]) end
  redis.call('EXPIRE', KEYS[7], @UNBILLED_TTL@)
end

if refused then
  if fence then
    redis.call('SET', KEYS[1], fence, 'PX', math.max(keep, settle_by - now_ms + 1000))
  else
    redis.call('DEL', KEYS[1])
  end
  unbilled(refused)
  return {0, refused}
end
-- the request's generation record, listed in its account's Activity (its newest @ACTIVITY_KEEP@, its record's life)
local function record_generation()
  if ARGV[9] == '' then return end
  redis.call('SET', KEYS[6], ARGV[9], 'EX', @GENERATION_TTL@)
  if ARGV[14] ~= '' then
    redis.call('ZADD', KEYS[11], t[1] .. string.format('%06d', tonumber(t[2])), ARGV[14])  -- epoch µs
    redis.call('ZREMRANGEBYRANK', KEYS[11], 0, -@ACTIVITY_KEEP@ - 1)
    redis.call('EXPIRE', KEYS[11], @GENERATION_TTL@)
  end
end
-- the request's current attempt: this is its one settlement (the fence says so from now on)
return_hold(KEYS[4], KEYS[5], ARGV[3])
redis.call('ZREM', KEYS[9], ARGV[13])
if ARGV[12] == '1' then redis.call('ZREM', KEYS[10], ARGV[13]) end
return_credit_hold(KEYS[13], KEYS[12], ARGV[15])
local receivers = 1
if ARGV[10] ~= '' then receivers = redis.call('PUBLISH', ARGV[10], ARGV[11]) end
-- a resumable answer's worker keeps its final event here too, with the end marker (workers/keeper.py):
-- kept, it reaches its client through any web process, even with the one that admitted it gone
local kept = ARGV[21] ~= ''
if kept then
  if ARGV[19] ~= '' then redis.pcall('XADD', KEYS[15], ARGV[19], 'f', ARGV[20]) end
  redis.pcall('XADD', KEYS[15], ARGV[21], ARGV[23], '')
  redis.call('EXPIRE', KEYS[15], ARGV[22])
  redis.call('EXPIRE', KEYS[16], ARGV[22])
end
local outcome = ARGV[2]
if outcome == 'bill' and receivers == 0 and not kept then outcome = 'unreceived' end
if outcome ~= 'bill' then
  unbilled(outcome)
  if outcome == 'failed' and (receivers > 0 or kept) then record_generation() end  -- its client was told the error
  return {1, receivers}
end
local model = ARGV[5]
redis.call('INCRBYFLOAT', KEYS[3], ARGV[8])
local function count(day)
  if redis.call('HINCRBY', day, model .. '|requests', 1) == 1 then  -- the day's first: it gets its TTL
    redis.call('EXPIRE', day, @USAGE_TTL@)
    redis.call('EXPIRE', KEYS[3], @USAGE_TTL@)
  end
  if ARGV[6] ~= '0' then redis.call('HINCRBY', day, model .. '|prompt_tokens', ARGV[6]) end
  if ARGV[7] ~= '0' then redis.call('HINCRBY', day, model .. '|completion_tokens', ARGV[7]) end
  if ARGV[8] ~= '0' then redis.call('HINCRBYFLOAT', day, model .. '|cost', ARGV[8]) end
end
count(KEYS[2])
if ARGV[12] == '1' then count(KEYS[8]) end
local cost_nanos = tonumber(ARGV[17]) or 0
if ARGV[16] == '1' and cost_nanos > 0 then  -- the account's credits pay: at most what is left
  local balance = tonumber(redis.call('HGET', KEYS[12], 'balance') or '0')
  local charge = math.min(cost_nanos, math.max(0, balance))
  if charge < cost_nanos then
    redis.call('HINCRBY', KEYS[7], 'shortfall|' .. model .. '|nanos', cost_nanos - charge)
    redis.call('EXPIRE', KEYS[7], @UNBILLED_TTL@)
  end
  if charge > 0 then
    redis.call('HINCRBY', KEYS[12], 'balance', -charge)
    redis.call('HINCRBY', KEYS[12], 'total_usage', charge)
    redis.call('RPUSH', KEYS[14], ARGV[18] .. string.format('%d', -charge) .. '}')
  end
end
record_generation()
return {1, receivers}
"""

_CONSTANTS = {"@SETTLED_KEEP_MS@": SETTLED_KEEP_MS, "@UNBILLED_TTL@": UNBILLED_TTL_SECONDS,
              "@ACTIVITY_KEEP@": ACTIVITY_KEEP,
              "@USAGE_TTL@": USAGE_TTL_SECONDS, "@GENERATION_TTL@": GENERATION_TTL_SECONDS}
for _name, _value in _CONSTANTS.items():
    _SETTLE = _SETTLE.replace(_name, str(_value))
SETTLE = Script(_SETTLE)

# KEYS: fence. ARGV: the new attempt, fence TTL ms. 1: moved; 0: the request settled (or was closed).
SUPERSEDE = Script("""
local fence = redis.call('GET', KEYS[1])
if fence then
  local head = string.sub(fence, 1, 1)
  if head == 's' or head == 'c' then return 0 end
  if tonumber(fence) >= tonumber(ARGV[1]) then return 1 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")

# KEYS: fence, holds, held total, the key's and the account's requests in flight, the account's credits hash,
# its credit holds. ARGV: hold member ('' = none), fence TTL ms, request id, credit hold member ('' = none).
# 1: closed (the hold, the credit hold and the leases are back); 0: the request settled already.
CLOSE = Script(RETURN_HOLD + RETURN_CREDIT_HOLD + """
local fence = redis.call('GET', KEYS[1])
if fence and string.sub(fence, 1, 1) == 's' then return 0 end
redis.call('SET', KEYS[1], 'c', 'PX', ARGV[2])
return_hold(KEYS[2], KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('ZREM', KEYS[5], ARGV[3])
return_credit_hold(KEYS[7], KEYS[6], ARGV[4])
return 1
""")


def settle_by_ms(deadline: float) -> int:
    """The last moment (epoch ms) a request with this deadline may settle, and when its hold ends."""
    return int((deadline + SETTLE_GRACE) * 1000)


def hold_member(request_id: str, reserved: str) -> str:
    """A request's member of its key's holds (empty: it holds nothing)."""
    return f"{request_id}|{reserved}" if reserved else ""


@dataclass(frozen=True)
class Settlement:
    """What settles one attempt of a request: ``bill`` it with its usage, or count it as ``failed``."""

    request_id: str
    attempt: int
    key_id: str  # ``anonymous`` for keyless requests
    model: str  # the endpoint that served, ``provider/model``
    deadline: float  # the job's (epoch seconds): ``settle_by_ms``
    outcome: str = "bill"  # or "failed": the client gets an error, the key is not charged
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: str = "0"  # USD, a decimal string INCRBYFLOAT takes as is
    reserved: str = ""  # the hold the request made at admission (USD decimal string), returned here
    generation: bytes = b""  # the msgpack record behind GET /api/v1/generation ('' = none)
    account: str = ""  # a signed-in user's key: its account's day totals and Activity count the request too
    credit: str = ""  # nanodollars held against the account's credits at admission: they pay ('' = not)

    def command(self, names: Names, channel: str, event: bytes, now: float | None = None,
                keep: "FinalKept | None" = None) -> tuple[list[str], list[Any]]:
        """``SETTLE``'s keys and arguments (``keep``: the final event's entry in the answer's kept events)."""
        key_id = self.key_id or ANONYMOUS
        held = self.reserved if key_id != ANONYMOUS else ""
        keys = [
            names.fence(self.request_id),
            usage_key(names, key_id, utc_day(now)),
            spend_key(names, key_id, utc_month(now)),
            holds_key(names, key_id),
            held_key(names, key_id),
            names.generation(self.request_id),
            unbilled_key(names, utc_day(now)),
            account_usage_key(names, self.account, utc_day(now)) if self.account else names.key("acct:none"),
            *leases_of(names, key_id, self.account),
            names.activity(self.account) if self.account else names.key("activity:none"),
        ]
        paid = bool(self.credit and self.account)
        account = self.account if paid else "none"
        keys += [credits_key(names, account), credit_holds_key(names, account), ledger_key(names, account),
                 names.answer_events(self.request_id), names.answer_owner(self.request_id)]
        listed = activity_member(self.request_id, key_id, self.model) if self.account and self.generation else ""
        final_id, frames, end_id, marker, ttl = keep or ("", b"", "", "end", 0)
        args: list[Any] = [self.attempt, self.outcome, hold_member(self.request_id, held),
                           settle_by_ms(self.deadline), self.model, self.prompt_tokens, self.completion_tokens,
                           self.cost, self.generation, channel, event, "1" if self.account else "0",
                           self.request_id, listed, hold_member(self.request_id, self.credit) if paid else "",
                           "1" if paid else "0", nanos(self.cost) if paid else 0,
                           self.usage_entry(now) if paid else "",
                           final_id, frames, end_id, ttl, marker]
        return keys, args

    def usage_entry(self, now: float | None = None) -> str:
        """The ledger entry's JSON up to its amount, which the script appends (what it charged)."""
        return Entry(id=f"usage-{self.request_id}", kind="usage", amount=0,
                     time=time.time() if now is None else now, model=self.model).open_amount()


@dataclass(frozen=True)
class Settled:
    """``settle``'s answer: ``status`` is SETTLED, REPEAT or REFUSED (then ``reason`` says why)."""

    status: int
    receivers: int = 0
    reason: str = ""

    @property
    def refused(self) -> bool:
        return self.status == REFUSED


async def settle(redis: Any, names: Names, settlement: Settlement, channel: str = "", event: bytes = b"",
                 *, retries: int = 2, now: float | None = None, keep: FinalKept | None = None) -> Settled:
    """Run ``SETTLE`` in one round trip, publishing ``event`` on ``channel`` inside it (empty: the caller
    publishes afterwards, on another Redis), and keeping its frames (``keep``, a resumable answer's). A
    connection lost on the way is retried: the fence makes a repeat harmless. ``now`` names the day and
    month the usage counts for (default: today)."""
    keys, args = settlement.command(names, channel, event, now, keep)
    for attempt in range(retries + 1):
        try:
            reply = await mux_of(redis).evalsha(SETTLE, keys, args)
            break
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if attempt == retries:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    status = int(reply[0])
    if status == REFUSED:
        reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return Settled(REFUSED, 0, reason)
    return Settled(status, int(reply[1]))


def _fence_ttl_ms(deadline: float) -> int:
    return max(1000, settle_by_ms(deadline) - int(time.time() * 1000) + 1000)


async def supersede(redis: Any, names: Names, request_id: str, attempt: int, deadline: float) -> bool:
    """Let only ``attempt`` (and later) settle from now on. False: the request settled already."""
    return bool(await mux_of(redis).evalsha(SUPERSEDE, [names.fence(request_id)],
                                            [attempt, _fence_ttl_ms(deadline)]))


async def close(redis: Any, names: Names, request_id: str, key_id: str, reserved: str, deadline: float,
                account: str = "", credit: str = "") -> bool:
    """End a request no attempt may settle any more, returning its hold, its ``credit`` hold against
    ``account``'s credits and its leases. False: it settled already."""
    keys, args = _close_arguments(names, request_id, key_id, reserved, deadline, account, credit)
    return bool(await mux_of(redis).evalsha(CLOSE, keys, args))


def close_command(names: Names, request_id: str, key_id: str, reserved: str, deadline: float,
                  account: str = "", credit: str = "") -> tuple[Any, ...]:
    """``close`` as one EVAL (the script's source, never NOSCRIPT), for a pipeline that must go out at once."""
    keys, args = _close_arguments(names, request_id, key_id, reserved, deadline, account, credit)
    return ("EVAL", CLOSE.source, len(keys), *keys, *args)


def _close_arguments(names: Names, request_id: str, key_id: str, reserved: str, deadline: float,
                     account: str, credit: str = "") -> tuple[list[str], list[Any]]:
    key_id = key_id or ANONYMOUS
    held = reserved if key_id != ANONYMOUS else ""
    paid = bool(account and credit)
    keys = [names.fence(request_id), holds_key(names, key_id), held_key(names, key_id),
            *leases_of(names, key_id, account), credits_key(names, account if paid else "none"),
            credit_holds_key(names, account if paid else "none")]
    return keys, [hold_member(request_id, held), _fence_ttl_ms(deadline), request_id,
                  hold_member(request_id, credit) if paid else ""]


def leases_of(names: Names, key_id: str, account: str) -> tuple[str, str]:
    """The sets of requests in flight a request of this key (``anonymous``: keyless) and account joined at
    admission (``api/access/limits.py``), which its settlement or close leaves."""
    return (inflight_key(names, key_id or ANONYMOUS),
            account_inflight_key(names, account) if account else names.key("inflight:none"))


async def record_usage(redis: Any, names: Names, key_id: str, model: str, prompt_tokens: int,
                       completion_tokens: int, cost: str, now: float | None = None,
                       account: str | None = None) -> None:
    """One served request billed directly, through the same script (for seeding: tests, screenshots)."""
    settlement = Settlement(request_id=new_request_id(), attempt=0, key_id=key_id, model=model,
                            deadline=time.time() + 3600, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, cost=cost, account=account or "")
    await settle(redis, names, settlement, now=now)
