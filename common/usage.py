"""Usage counters per API key, UTC day and model: the Redis layout both tiers share.

The worker writes them in the request's settlement, the one script that also publishes its answer
(``common/settlement.py``); the web tier reads them (``megabrain keys usage``, ``GET /usage``) and the
admission script reads the month's spend and what is held for budgets. Living in ``common`` lets both
import it without the worker importing the web tier.

    usage:<key id>:<YYYY-MM-DD>  hash  "<model>|<field>" -> n   requests, tokens, cost per UTC day and model
    usage:acct:<account>:<day>   hash  the same, summed over the keys of a signed-in user's account (its
                                       Profile reads 30 of these, however many keys it has)
    spend:<key id>:<YYYY-MM>     float                          month-to-date cost in USD
    holds:<key id>               zset  "<request id>|<USD>"     each request's reservation, scored by its deadline (ms)
    held:<key id>                float                          the sum of those holds (api/access/limits.py)
    inflight:<key id>            zset  "<request id>"           requests in flight (a concurrency lease each), scored
    inflight:acct:<account>      zset                           by their deadline (ms): the same, per account
                                       (``anonymous``: every keyless request together)
    gen:<request id>             msgpack ``Generation``          one served request, for its key to look up
    activity:<account>           zset  "<request id>|<key id>|<model>" by settlement time (epoch µs): a signed-in
                                       user's answered requests, whose records are gen:<request id>
                                       (the Activity page; the newest ACTIVITY_KEEP, for GENERATION_TTL)
    unbilled:<YYYY-MM-DD>        hash  "<reason>|<model>|<field>" upstream work nobody is charged for:
                                       superseded, closed, late, failed, unreceived (common/settlement.py)

Requests without a key are counted under the id ``anonymous`` (real key ids are 8 hex digits).
"""

from __future__ import annotations

import datetime as dt
import functools
import time

import msgspec

from common.names import Names

ANONYMOUS = "anonymous"
USAGE_TTL_SECONDS = 400 * 86400
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost")


GENERATION_TTL_SECONDS = 31 * 86400  # OpenRouter keeps generations looked up for at least 30 days
ACTIVITY_KEEP = 10_000  # an account's Activity lists at most its latest this many requests


def activity_member(request_id: str, key_id: str, model: str) -> str:
    """An Activity entry: what its filters read (key, model) without reading the record."""
    return f"{request_id}|{key_id}|{model}"


def parse_activity_member(member: str) -> tuple[str, str, str]:
    request_id, key_id, model = (member.split("|", 2) + ["", ""])[:3]
    return request_id, key_id, model


class Generation(msgspec.Struct, kw_only=True):
    """What ``GET /api/v1/generation?id=`` tells the key that made a request about it."""

    id: str  # the answer's id (``chatcmpl-<request id>``)
    key_id: str  # only this key may read it; ``anonymous`` records are readable by nobody
    model: str  # the endpoint that answered, ``provider/model``
    canonical: str  # its canonical ``author/model`` id
    provider: str
    created: float  # epoch seconds when the answer finished
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: str = "0"  # USD, exact decimal string
    latency_ms: int = 0  # the upstream call, first byte sent to last byte received
    finish_reason: str | None = None
    streamed: bool = False
    upstream_model: str = ""
    ttft_ms: int | None = None  # a stream's first data, from the upstream call's start (None: not streamed)
    status: int = 200  # what the client got: 200, or the error status of a request the worker failed
    error_type: str | None = None  # that error's ``error_type`` (a failed request's record lists it in Activity)


generation_encoder = msgspec.msgpack.Encoder()
generation_decoder = msgspec.msgpack.Decoder(Generation)


def utc_day(now: float | None = None) -> str:
    return _day_name(int((time.time() if now is None else now) // 86400))


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    """A day's name, worked out once per day: every request's usage write asks for it."""
    return _utc(day * 86400.0).strftime("%Y-%m-%d")


def utc_month(now: float | None = None) -> str:
    return _month_name(int((time.time() if now is None else now) // 86400))


@functools.lru_cache(maxsize=4)
def _month_name(day: int) -> str:
    """The month of a day, worked out once per day (every request's usage write and budget check ask)."""
    return _utc(day * 86400.0).strftime("%Y-%m")


def _utc(now: float | None) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)


def usage_key(names: Names, key_id: str, day: str) -> str:
    return names.key(f"usage:{key_id}:{day}")


def account_usage_key(names: Names, account_id: str, day: str) -> str:
    return names.key(f"usage:acct:{account_id}:{day}")


def spend_key(names: Names, key_id: str, month: str) -> str:
    return names.key(f"spend:{key_id}:{month}")


def held_key(names: Names, key_id: str) -> str:
    return names.key(f"held:{key_id}")


def holds_key(names: Names, key_id: str) -> str:
    return names.key(f"holds:{key_id}")


def inflight_key(names: Names, key_id: str) -> str:
    return names.key(f"inflight:{key_id}")


def account_inflight_key(names: Names, account: str) -> str:
    return names.key(f"inflight:acct:{account}")


def unbilled_key(names: Names, day: str) -> str:
    return names.key(f"unbilled:{day}")
