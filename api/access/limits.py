"""Rate limits and budgets, checked and counted atomically in Redis by one Lua script per request.

Why one script: a separate read and write lets every API process pass the same check before any of them
counts (the multi-replica leak other gateways shipped). The script reads the clock with Redis ``TIME``
(no skew between processes), checks every limit that applies to the request, and only if all pass
increments all of them, so a request refused by one limit consumes none of the others.

Counters are fixed windows aligned to the epoch (a minute; a UTC day, since epoch days start at UTC
midnight), each one Redis hash ``{w: window index, n: count}`` with a TTL, so its key name does not depend
on the time and every key the script touches is passed in ``KEYS`` (but for the liveness key of an idle
worker it pops, which is named from the popped id: see ``_ENQUEUE``).

The same call also answers "is this key revoked?" (``SISMEMBER``) and "does this request fit in its monthly
budget?" and records the key's last use when the caller asks, so a request with a cached key costs exactly
one round trip. For a model request the same script also queues the job once the request is admitted
(``_ENQUEUE``, ``common.queue.JobWrite``): admission and enqueue are one round trip together.

Budgets hold under bursts because the check reserves: each admitted request holds its worst-case cost
(prompt estimate plus maximum output, at the model's prices) as one entry of the key's holds, with its own
deadline, and a request is refused when month-to-date spend plus what is held plus its own worst case
exceeds the budget. The request's settlement (``common/settlement.py``: the real cost added to the spend
as its answer is published) or its failure returns the hold; a hold nobody returned (its worker and web
process both lost) ends at its own deadline, returned by the next admission of the key, so however
steady the key's traffic, a lost reservation blocks nothing for longer than the request's deadline plus
``SETTLE_GRACE``.

Fairness between tenants rests on leases the same way: a request admitted with its job joins its key's
and its account's set of requests in flight (``inflight:<key id>``, ``inflight:acct:<account>``; keyless
requests all share ``inflight:anonymous``), one member each scored by its deadline, and is refused (429)
while one of them holds its limit (``Limits.key_concurrency``/``account_concurrency``/
``anonymous_concurrency``), before any counter counts. Its settlement or its close leaves them
(``common/settlement.py``), exactly once whoever gets there first; a member nobody removed (its worker and
web process both lost) is dropped by the next admission once its deadline passed, which no traffic can
move. One key's flood thus fills its own share of a pool's slots and gets 429s, not its neighbours.

When Redis cannot be reached we fail closed for every request (503 ``temporarily_unavailable``), not
only for paid models: the job queue lives in the same Redis, so a free request let through could not be
served anyway, and failing closed means an outage can never be used to burn the free quota.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import metrics
from common.errors import GatewayError, unavailable
from common.ledger import RETURN_CREDIT_HOLD, format_usd
from common.mux import Script, mux_of
from common.names import Names
from common.queue import IDLE_FRESH, PRIORITY_HEAD_START_MS, JobWrite
from common.settlement import RETURN_HOLD, hold_member
from common.usage import ANONYMOUS, account_inflight_key, inflight_key

if TYPE_CHECKING:
    from common.settings import Limits

log = logging.getLogger(__name__)

MINUTE = 60
DAY = 86400

# Kinds of counters; each maps to the error it produces when it is full.
IP_MINUTE = "ip_minute"
IP_DAY = "ip_day"
KEY_MINUTE = "key_minute"
ACCOUNT_DAY = "account_day"  # free models through a signed-in user's keys
SIGNUP_DAY = "signup_day"  # accounts created from one client IP
LOGIN_EMAIL_IP = "login_email_ip"  # log-in attempts at one email from one client IP (api/access/login_guard.py)
LOGIN_EMAIL = "login_email"  # ... at one email from anywhere
LOGIN_IP = "login_ip"  # ... from one client IP at any email
ADMIN_IP = "admin_ip"  # admin-key attempts from one client IP (api/access/admin_auth.py)
EARLY_KINDS = frozenset({IP_MINUTE, IP_DAY, KEY_MINUTE})  # remembered used up per process (refused_early)

OK, REVOKED, BUDGET, LIMITED, BUSY, CREDITS = 0, 1, 2, 3, 4, 5
QUEUED, HANDED = 1, 2  # the admission+enqueue script's last element (_ENQUEUE; 0: the queue was full)

_LIMITS = RETURN_HOLD + RETURN_CREDIT_HOLD + """
-- KEYS: revoked set, last-used hash, spend key, held total, holds, the owner's credits hash, its credit
--       holds, n counter hashes, m lease sets[, queue, job key, idle set]
-- ARGV: key id ('' = anonymous), touch ('1'/'0'), budget ('' = none), worst-case cost to hold ('' = none),
--       the hold's (and leases') deadline (epoch ms), its member ('<request id>|<USD>'), n, the worst case
--       in nanodollars to hold against the owner's credits ('' = the key spends no credits), its member
--       ('<request id>|<nanodollars>'), then limit, window seconds per counter, then m, the lease member
--       (request id), the limit of each lease set[, the job: see _ENQUEUE]
local n = tonumber(ARGV[7])
local m = tonumber(ARGV[10 + 2 * n])
local t = redis.call('TIME')
local now = tonumber(t[1])
local now_ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local key_id = ARGV[1]
local reserve = tonumber(ARGV[4]) or 0
if key_id ~= '' then
  if redis.call('SISMEMBER', KEYS[1], key_id) == 1 then return {1, 0} end
  if ARGV[3] ~= '' then
    local budget = tonumber(ARGV[3])
    local spent = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
    if spent >= budget then return {2, 0} end
    return_overdue(KEYS[5], KEYS[4], now_ms)  -- holds past their deadline go back first, whoever held them
    local held = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
    if spent + held + reserve > budget then return {2, 1} end
  end
  if ARGV[8] ~= '' then  -- prepaid credits (common/ledger.py): the worst case must fit in what is not held
    return_overdue_credits(KEYS[7], KEYS[6], now_ms)
    local c = redis.call('HMGET', KEYS[6], 'balance', 'held')
    local available = (tonumber(c[1]) or 0) - (tonumber(c[2]) or 0)
    if available < tonumber(ARGV[8]) then return {5, math.max(0, available)} end
  end
end
-- requests in flight: each lease set holds one member per admitted request, scored by its deadline, so
-- one a lost worker kept ends there; one at its limit refuses before any counter counts
for j = 1, m do
  local lease, limit = KEYS[7 + n + j], tonumber(ARGV[11 + 2 * n + j])
  if redis.call('ZCARD', lease) >= limit then  -- full: first drop whoever is past its deadline
    redis.call('ZREMRANGEBYSCORE', lease, '-inf', now_ms)
    if redis.call('ZCARD', lease) >= limit then return {4, j} end
  end
end
local out = {0, 0}
local state = {}
for i = 1, n do
  local limit = tonumber(ARGV[8 + 2 * i])
  local window_ms = tonumber(ARGV[9 + 2 * i]) * 1000
  local w = math.floor(now_ms / window_ms)
  local reset_ms = math.floor((w + 1) * window_ms - now_ms)
  local h = redis.call('HMGET', KEYS[7 + i], 'w', 'n')
  local count = 0
  local same = tonumber(h[1]) == w
  if same then count = tonumber(h[2]) or 0 end
  if count >= limit and out[1] == 0 then
    out[1] = 3
    out[2] = i
  end
  state[i] = {w, count, reset_ms, limit, same}
end
for i = 1, #state do
  local s = state[i]
  local count = s[2]
  if out[1] == 0 then
    count = count + 1
    if s[5] then
      redis.call('HSET', KEYS[7 + i], 'n', count)
    else  -- a new window: its TTL (end of the window + 1 s) is set once, by its first request
      redis.call('HSET', KEYS[7 + i], 'w', s[1], 'n', count)
      redis.call('PEXPIRE', KEYS[7 + i], s[3] + 1000)
    end
  end
  local remaining = s[4] - count
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = s[4]
  out[#out + 1] = remaining
  out[#out + 1] = s[3]
end
if out[1] == 0 and key_id ~= '' and ARGV[2] == '1' then
  redis.call('HSET', KEYS[2], key_id, now)
end
if out[1] == 0 and m > 0 then
  -- the set's TTL only collects what nobody uses: past the newest deadline (every request's is its arrival
  -- plus the same timeout, so the newest is the latest)
  local keep = tonumber(ARGV[5]) - now_ms + 60000
  for j = 1, m do
    redis.call('ZADD', KEYS[7 + n + j], ARGV[5], ARGV[11 + 2 * n])
    redis.call('PEXPIRE', KEYS[7 + n + j], keep)
  end
end
if out[1] == 0 and reserve > 0 then
  -- the request's own hold, ending at its own deadline; the keys' TTL only collects what nobody uses
  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[6])
  redis.call('INCRBYFLOAT', KEYS[4], ARGV[4])  -- Redis' own decimal formatting: 0.3 + 0.3 + 0.3 is 0.9
  local keep = tonumber(ARGV[5]) - now_ms + 60000
  redis.call('PEXPIRE', KEYS[5], keep)
  redis.call('PEXPIRE', KEYS[4], keep)
end
if out[1] == 0 and ARGV[8] ~= '' then
  -- the credit hold, ending at the same deadline; the credits hash itself never expires (it is money)
  redis.call('ZADD', KEYS[7], ARGV[5], ARGV[9])
  redis.call('HINCRBY', KEYS[6], 'held', ARGV[8])
  redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[5]) - now_ms + 60000)
end
"""

# The admitted request's job, written in the same script (common/queue.py's JobWrite, in write_job's
# order): the reply gets one more element, 1 if the job was queued, 0 if the queue was over its depth
# limit (the request still counts, as when the depth check fails after a separate admission), or 2 and
# the worker id when an idle worker process of the pool took the job directly (a hand-off: nothing is
# queued, the job went out on that process's control channel, and the worker's wake-up, claim and payload
# read are saved). The depth check comes first: a full queue refuses whether or not a worker is idle; so
# does one whose next job has waited past its bound (``QUEUE_WAIT_SHARE``: an overloaded pool).
# The liveness key of a popped worker is named from its id (a prefix in ARGV), like the claim script's
# payload keys: it cannot be known before the pop. A popped registration is consumed whatever follows;
# the worker registers again when it has a free slot (workers/pool.py).
_ENQUEUE = """
if out[1] == 0 then
  -- ARGV after the counters: depth limit ('' = none), ttl ms, job, score, id, wake channel,
  --   idle freshness seconds, liveness key prefix, control channel prefix, pool, the next job's longest
  --   wait in ms (0 = none), the priority head start in ms (common/queue.py)
  local e = 11 + 2 * n + m
  local q = 7 + n + m
  local depth = tonumber(ARGV[e + 1])
  local max_wait = tonumber(ARGV[e + 11]) or 0
  local over = depth and redis.call('ZCARD', KEYS[q + 1]) >= depth
  if not over and max_wait > 0 then  -- the next job waited too long: an overloaded pool (common/queue.py)
    local head = redis.call('ZRANGE', KEYS[q + 1], 0, 0, 'WITHSCORES')
    if #head > 0 then
      local enqueued = tonumber(head[2])
      local class = tonumber(ARGV[e + 12])
      local keyed_head = enqueued < now_ms - class / 2
      if keyed_head then enqueued = enqueued + class end
      -- a keyed job goes ahead of every keyless one: only a keyed head's wait is its own
      over = now_ms - enqueued > max_wait and (keyed_head or tonumber(ARGV[e + 4]) >= now_ms - class / 2)
    end
  end
  if over then
    out[#out + 1] = 0
  else
    -- 1. an idle worker of the pool, oldest registration first, up to three tries
    local handed = nil
    for _ = 1, 3 do
      local popped = redis.call('ZPOPMIN', KEYS[q + 3])
      if #popped == 0 then break end
      local worker = popped[1]
      -- 2. only a recent registration of a process that is alive (a dead one's entry is dropped here)
      if now - tonumber(popped[2]) <= tonumber(ARGV[e + 7])
          and redis.call('EXISTS', ARGV[e + 8] .. worker) == 1 then
        -- 3. the job on its control channel: 'job <pool> <job id> <serialized job>'; a subscriber got it
        local message = 'job ' .. ARGV[e + 10] .. ' ' .. ARGV[e + 5] .. ' ' .. ARGV[e + 3]
        if redis.call('PUBLISH', ARGV[e + 9] .. worker, message) >= 1 then
          handed = worker
          break
        end
      end
    end
    if handed then
      out[#out + 1] = 2
      out[#out + 1] = handed
    else
      -- 4. nobody idle: the shared queue, as write_job writes it
      redis.call('PSETEX', KEYS[q + 2], ARGV[e + 2], ARGV[e + 3])
      redis.call('ZADD', KEYS[q + 1], ARGV[e + 4], ARGV[e + 5])
      redis.call('PUBLISH', ARGV[e + 6], '')
      out[#out + 1] = 1
    end
  end
end
"""

LIMITS_SCRIPT = Script(_LIMITS + "return out\n")

# Taking back one count of each counter, in its current window only (an attempt that turned out not to be
# one that counts: a right password, the right admin key).
GIVE_BACK_SCRIPT = Script("""
-- KEYS: counter hashes; ARGV: window seconds of each
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'w', 'n')
  if tonumber(h[1]) == math.floor(now_ms / (tonumber(ARGV[i]) * 1000)) and (tonumber(h[2]) or 0) > 0 then
    redis.call('HINCRBY', key, 'n', -1)
  end
end
return 0
""")
ADMIT_AND_ENQUEUE_SCRIPT = Script(_LIMITS + _ENQUEUE + "return out\n")


@dataclass(frozen=True)
class Counter:
    """One limit that applies to a request: at most ``limit`` requests per ``window`` seconds."""

    kind: str
    key: str
    limit: int
    window: int


@dataclass(frozen=True)
class Lease:
    """A bound on requests in flight at once: at most ``limit`` members in the set ``key`` (``KEY_LEASE``: an
    API key's, ``ACCOUNT_LEASE``: an account's, ``ANONYMOUS_LEASE``: every keyless request's)."""

    kind: str
    key: str
    limit: int


KEY_LEASE, ACCOUNT_LEASE, ANONYMOUS_LEASE = "key", "account", "anonymous"
BUSY_RETRY_AFTER = 1.0  # seconds: a request in flight usually ends sooner than a rate window


@dataclass(frozen=True)
class CounterState:
    counter: Counter
    remaining: int
    reset_seconds: float


@dataclass
class LimitDecision:
    allowed: bool
    error: GatewayError | None = None
    headers: dict[str, str] = field(default_factory=dict)
    revoked: bool = False
    enqueued: bool | None = None  # with ``check(enqueue=...)``: the job was queued (False: queue full)
    handed_to: str | None = None  # ... or, enqueued too, handed straight to this idle worker process


class LimitNames:
    def __init__(self, names: Names) -> None:
        self.names = names

    def ip_minute(self, subject: str) -> str:
        return self.names.key(f"rl:ipm:{subject}")

    def ip_day(self, subject: str) -> str:
        return self.names.key(f"rl:ipd:{subject}")

    def key_minute(self, key_id: str) -> str:
        return self.names.key(f"rl:key:{key_id}")


MAX_MARKS = 10_000  # counters remembered as used up, per process (callers choose IPs and keys)


class Limiter:
    """Runs the limit script. One instance per process (it holds the registered script).

    It also remembers, until their window ends, the counters a reply showed used up (``_full``), so a caller
    past its limit is refused before its next request is planned, without a Redis call
    (``refused_early``). Redis stays the judge: a process that has not seen the counter full asks it.
    """

    def __init__(self, redis: Redis, names: Names, *, timeout: float = 2.0) -> None:
        self.redis = redis
        self.names = LimitNames(names)
        self.timeout = timeout
        self._full: dict[str, float] = {}  # counter key -> monotonic time its window ends
        # the script names a popped idle worker's liveness key and control channel from these and its id
        self._alive_prefix, self._control_prefix = names.alive(""), names.control_channel("")

    def ip_minute(self, subject: str, limit: int) -> Counter:
        return Counter(IP_MINUTE, self.names.ip_minute(subject), limit, MINUTE)

    def ip_day(self, subject: str, limit: int) -> Counter:
        return Counter(IP_DAY, self.names.ip_day(subject), limit, DAY)

    def key_minute(self, key_id: str, rpm: int) -> Counter:
        return Counter(KEY_MINUTE, self.names.key_minute(key_id), rpm, MINUTE)

    def account_day(self, account_id: str, limit: int) -> Counter:
        return Counter(ACCOUNT_DAY, self.names.names.account_day(account_id), limit, DAY)

    def leases(self, key_id: str | None, account: str | None, limits: "Limits") -> list[Lease]:
        """The bounds on requests in flight a request of this key (None: keyless) joins: its key's and its
        account's, or the one every keyless request shares (``anonymous`` is never a key id)."""
        names = self.names.names
        if key_id is None:
            return [Lease(ANONYMOUS_LEASE, inflight_key(names, ANONYMOUS), limits.anonymous_concurrency)]
        leases = [Lease(KEY_LEASE, inflight_key(names, key_id), limits.key_concurrency)]
        if account:
            leases.append(Lease(ACCOUNT_LEASE, account_inflight_key(names, account), limits.account_concurrency))
        return leases

    def signup_day(self, subject: str, limit: int) -> Counter:
        return Counter(SIGNUP_DAY, self.names.names.signup_day(subject), limit, DAY)

    def attempts(self, kind: str, scope: str, limit: int, window: int) -> Counter:
        """A counter of attempts (log-ins, admin keys) of ``kind`` for ``scope`` (an IP subject, an email's
        keyed hash, or both)."""
        return Counter(kind, self.names.names.attempts(f"{kind}:{scope}"), limit, window)

    async def give_back(self, counters: list[Counter]) -> None:
        """Take one count back from each counter (current window only): the attempt did not count."""
        if counters:
            async with asyncio.timeout(self.timeout):
                await mux_of(self.redis).evalsha(GIVE_BACK_SCRIPT, [c.key for c in counters],
                                                 [c.window for c in counters])

    async def check(
        self,
        counters: list[Counter],
        *,
        key_id: str | None = None,
        revoked_key: str = "",
        used_key: str = "",
        spend_key: str = "",
        held_key: str = "",
        holds_key: str = "",
        budget: float | None = None,
        reserve: Decimal | None = None,
        hold_id: str = "",
        hold_until_ms: int = 0,
        credits_key: str = "",
        credit_holds_key: str = "",
        credit_reserve: int | None = None,
        touch: bool = False,
        leases: list[Lease] | None = None,
        lease_id: str = "",
        enqueue: JobWrite | None = None,
        depth_limit: int | None = None,
        topup_url: str | None = None,
    ) -> LimitDecision:
        """Check and count every counter at once; also the key's revocation and budget when given.

        ``counters`` are checked in order and the first full one is reported. ``reserve`` (USD) is held
        against the budget when the request is admitted, as the hold ``hold_id`` (the request id) that
        ends at ``hold_until_ms`` (epoch ms; ``common/settlement.py``). ``leases``: each set must hold fewer
        than its limit of requests in flight, and the admitted request joins them all as ``lease_id`` until
        ``hold_until_ms`` (its settlement or close leaves them first). ``credit_reserve`` (nanodollars) is
        held like ``reserve`` against the balance in ``credits_key`` (an account's key: ``common/ledger.py``);
        a balance that cannot cover it is a 402 ``insufficient_credits`` naming ``topup_url``. With ``enqueue``,
        an admitted request's job is
        queued by the same script (its queue must be on this Redis), unless the queue holds ``depth_limit``
        jobs already, or handed to an idle worker process of its pool (``LimitDecision.handed_to``). Redis
        errors become a 503 (fail closed; see the module docstring).
        """
        placeholder = self.names.names.key("rl:none")
        keys = [revoked_key or placeholder, used_key or placeholder, spend_key or placeholder,
                held_key or placeholder, holds_key or placeholder, credits_key or placeholder,
                credit_holds_key or placeholder]
        leases = [lease for lease in leases or () if lease.limit > 0] if lease_id else []
        keys += [c.key for c in counters]
        keys += [lease.key for lease in leases]
        held = "" if not reserve or not held_key or not hold_id else format(reserve, "f")
        args: list[str | int | bytes] = [key_id or "", "1" if touch else "0", "" if budget is None else repr(budget),
                                         held, hold_until_ms, hold_member(hold_id, held), len(counters)]
        credit = "" if credit_reserve is None or not credits_key else str(credit_reserve)
        args += [credit, hold_member(hold_id, credit)]
        for c in counters:
            args += [c.limit, c.window]
        args += [len(leases), lease_id]
        args += [lease.limit for lease in leases]
        script = LIMITS_SCRIPT
        if enqueue is not None:
            script = ADMIT_AND_ENQUEUE_SCRIPT
            keys += [enqueue.queue, enqueue.job_key, enqueue.idle_workers]
            args += ["" if depth_limit is None else depth_limit, enqueue.ttl_ms, enqueue.data, enqueue.score_ms,
                     enqueue.job_id, enqueue.wake_channel, IDLE_FRESH, self._alive_prefix, self._control_prefix,
                     enqueue.pool, enqueue.max_wait_ms, PRIORITY_HEAD_START_MS]
        try:
            async with asyncio.timeout(self.timeout):  # no task per call, unlike wait_for
                reply = await mux_of(self.redis).evalsha(script, keys, args)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("rate limiter unavailable: %s", type(exc).__name__)
            return LimitDecision(False, unavailable("Rate limiting is temporarily unavailable.", 2.0))
        handed_to = None
        if enqueue is not None and reply[0] == OK and int(reply[2 + 3 * len(counters)]) == HANDED:
            handed_to = reply.pop().decode()  # the worker id after the marker; the rest is all numbers
        numbers = [int(x) for x in reply]
        if numbers[0] == BUSY:
            return LimitDecision(False, busy_error(leases[numbers[1] - 1]))
        self._remember_full(counters, numbers)
        decision = decide(counters, numbers, budget, reserve, credit_reserve, topup_url)
        if enqueue is not None and decision.allowed:
            decision.enqueued = reply[-1] in (QUEUED, HANDED)
            decision.handed_to = handed_to
        return decision

    def _remember_full(self, counters: list[Counter], reply: list[int]) -> None:
        """Note the counters this reply shows used up (none on a revoked key or budget refusal)."""
        if reply[0] not in (OK, LIMITED) or len(reply) < 2 + 3 * len(counters):
            return
        now = time.monotonic()
        for i, counter in enumerate(counters):
            if counter.kind in EARLY_KINDS and reply[2 + 3 * i + 1] <= 0:
                if len(self._full) >= MAX_MARKS:
                    self._full = {k: until for k, until in self._full.items() if until > now}
                    if len(self._full) >= MAX_MARKS:
                        self._full.clear()
                self._full[counter.key] = now + reply[2 + 3 * i + 2] / 1000.0

    def refused_early(self, counters: list[Counter]) -> GatewayError | None:
        """The refusal of the first of ``counters`` this process saw used up in its current window, or None.
        No Redis call: a dictionary hit per counter."""
        if not self._full:
            return None
        now = time.monotonic()
        for counter in counters:
            until = self._full.get(counter.key)
            if until is None:
                continue
            if until <= now:
                del self._full[counter.key]
                continue
            state = CounterState(counter, 0, until - now)
            return limit_error(state, rate_limit_headers(state))
        return None


def decide(counters: list[Counter], reply: list[int], budget: float | None,
           reserve: Decimal | None = None, credit_reserve: int | None = None,
           topup_url: str | None = None) -> LimitDecision:
    """Turn the script's reply into the response: allowed or the documented error, plus headers."""
    status, refused_index = reply[0], reply[1]
    if status == REVOKED:
        return LimitDecision(False, invalid_key_error(), revoked=True)
    if status == CREDITS:
        metrics.credit_event("insufficient_credits")
        return LimitDecision(False, insufficient_credits(refused_index, credit_reserve or 0, topup_url))
    if status == BUDGET:
        return LimitDecision(False, budget_error(budget or 0.0, reserve if refused_index == 1 else None))
    states = [
        CounterState(c, reply[2 + 3 * i + 1], reply[2 + 3 * i + 2] / 1000.0) for i, c in enumerate(counters)
    ]
    if status == LIMITED:
        state = states[refused_index - 1]
        headers = rate_limit_headers(state)
        return LimitDecision(False, limit_error(state, headers), headers)
    binding = min(states, key=lambda s: (s.remaining, s.counter.window), default=None)
    return LimitDecision(True, None, rate_limit_headers(binding) if binding else {})


def rate_limit_headers(state: CounterState) -> dict[str, str]:
    """``X-RateLimit-Reset`` is seconds until the window resets (like the IETF RateLimit draft)."""
    return {
        "x-ratelimit-limit": str(state.counter.limit),
        "x-ratelimit-remaining": str(state.remaining),
        "x-ratelimit-reset": str(max(1, math.ceil(state.reset_seconds))),
    }


def limit_error(state: CounterState, headers: dict[str, str]) -> GatewayError:
    c = state.counter
    wait = max(1, math.ceil(state.reset_seconds))
    if c.kind == IP_DAY:
        return GatewayError(
            "promotion_limit_reached",
            f"The free allowance of {c.limit} requests per day without an API key is used up. "
            "Use an API key to continue, or come back tomorrow (UTC).",
            headers=headers,
        )
    if c.kind == SIGNUP_DAY:
        message = "Too many sign-ups from this network today. Try again tomorrow (UTC)."
    elif c.kind in (LOGIN_EMAIL_IP, LOGIN_EMAIL, LOGIN_IP):
        message = f"Too many log-in attempts. Try again in {max(1, round(wait / 60))} min."
    elif c.kind == ADMIN_IP:
        message = f"Too many attempts with a wrong admin key from this address. Retry in {wait} s."
    elif c.kind == ACCOUNT_DAY:
        message = (f"Your account's free allowance of {c.limit} free-model requests per day is used up. "
                   "It resets at midnight UTC; paid models are not affected.")
    elif c.kind == KEY_MINUTE:
        message = f"Rate limit of this API key reached ({c.limit} requests per minute). Retry in {wait} s."
    else:
        message = f"Free-model rate limit reached ({c.limit} requests per minute per client). Retry in {wait} s."
    return GatewayError("rate_limit_exceeded", message, retry_after=state.reset_seconds, headers=headers)


def busy_error(lease: Lease) -> GatewayError:
    """The 429 of a request over a bound on requests in flight: retry when one of them ends."""
    whose = {KEY_LEASE: "this API key", ACCOUNT_LEASE: "this account's API keys together",
             ANONYMOUS_LEASE: "requests without an API key (all clients together)"}[lease.kind]
    advice = " Use an API key for more." if lease.kind == ANONYMOUS_LEASE else " Retry when one of them ends."
    return GatewayError("rate_limit_exceeded",
                        f"Too many requests in flight: {whose} may have {lease.limit} at once.{advice}",
                        retry_after=BUSY_RETRY_AFTER)


def usd(amount: float | Decimal) -> str:
    """Money as money: ``$0.00001``, ``$5.00``, ``$0.16`` — never ``1e-05``."""
    value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    if value == value.quantize(Decimal("0.01")):
        return f"${value:.2f}"
    return "$" + format(value.normalize(), "f")


def budget_error(budget: float, reserve: Decimal | None = None) -> GatewayError:
    if reserve is not None:
        return GatewayError(
            "budget_exceeded",
            f"This request could cost up to {usd(reserve.quantize(Decimal('0.000001'), 'ROUND_UP'))} (its prompt "
            f"and max_tokens of output), more than is left of this API key's monthly budget of {usd(budget)} "
            "after its spend and its requests in flight. Lower max_tokens, or wait for those to finish.",
        )
    return GatewayError(
        "budget_exceeded",
        f"This API key has used up its monthly budget of {usd(budget)}. It resets at the start of the next "
        "month (UTC).",
    )


def insufficient_credits(available: int, worst_case: int, topup_url: str | None) -> GatewayError:
    """402: the account's balance (nanodollars not held by its requests in flight) cannot cover what this
    request could cost. Says both, and where to add credits."""
    where = f"Add credits at {topup_url}" if topup_url else "Ask the operator of this gateway for credits"
    return GatewayError(
        "insufficient_credits",
        f"This request could cost up to {format_usd(worst_case)} (its prompt and max_tokens of output), more "
        f"than this account's available credit balance of {format_usd(available)}. {where}, or lower "
        "max_tokens. Free models need no credits.",
        code="INSUFFICIENT_CREDITS",
    )


def invalid_key_error() -> GatewayError:
    return GatewayError(
        "authentication_required",
        "The API key is invalid or has been revoked. Send a valid key as 'Authorization: Bearer mb-...', "
        "or no key at all to use the free models.",
    )
