"""The Activity page: a signed-in user's recent requests, one row each, and their CSV export.

Read from what settled them, nothing else: the settlement that bills a request writes its generation record
(``gen:<request id>``, what ``GET /api/v1/generation`` answers) and lists it in the account's
``activity:<account>`` (common/settlement.py), in the same script that publishes its answer. So a row is
there exactly when the request was billed, with the numbers it was billed for; a request a worker failed
(not charged) is listed with the error status its client got, from the settlement that told it. Refusals
before the queue (authentication, limits, credits) never reach a worker and are not listed. No prompt or
answer is ever stored, so none can be shown.

Entries name their key and model, so the filters read no record they do not show; a page reads at most
``SCAN_LIMIT`` entries to fill itself, then offers "older" from where it stopped.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.access.keys import KeyRecord, KeyStore
from api.pages.forms import PAGE_HEADERS, Visitor, visitor
from common.usage import GENERATION_TTL_SECONDS, Generation, generation_decoder, parse_activity_member

PAGE_SIZE = 50
SCAN_CHUNK = 200  # entries read per round trip while filling a filtered page
SCAN_LIMIT = 2_000  # entries one page view reads at most
CSV_LIMIT = 10_000  # rows one export holds at most (the Activity keeps no more per account)
CSV_FIELDS = ("time_utc", "request_id", "key", "model", "provider", "upstream_model", "prompt_tokens",
              "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd",
              "latency_ms", "ttft_ms", "status", "error_type", "finish_reason", "streamed")


@dataclass
class Row:
    at_us: int  # when it settled (the entry's score, epoch µs)
    request_id: str
    key: str  # the key's name (or its id when it is not among the account's keys any more)
    record: Generation

    @property
    def cost(self) -> Decimal:
        try:
            return Decimal(self.record.cost)
        except InvalidOperation:
            return Decimal(0)


@dataclass
class Filters:
    key_id: str = ""
    model: str = ""

    def admits(self, key_id: str, model: str) -> bool:
        return (not self.key_id or key_id == self.key_id) and (not self.model or model == self.model)


@dataclass(frozen=True)
class Cursor:
    """Where the next (older) page starts: at entries scored ``at_us`` or less, after the first ``skip`` of
    those scored exactly ``at_us`` (two requests can settle in the same microsecond)."""

    at_us: int
    skip: int = 0

    def __str__(self) -> str:
        return f"{self.at_us}-{self.skip}"

    @classmethod
    def parse(cls, text: str | None) -> "Cursor | None":
        try:
            at, _, skip = (text or "").partition("-")
            return cls(int(at), int(skip or 0)) if at else None
        except ValueError:
            return None


async def read_rows(who: Visitor, filters: Filters, *, cursor: Cursor | None = None, after_us: int | None = None,
                    limit: int = PAGE_SIZE, scan_limit: int = SCAN_LIMIT,
                    names: dict[str, str] | None = None) -> tuple[list[Row], Cursor | None]:
    """Up to ``limit`` rows, newest first, from ``cursor`` on (the newest when None) down to ``after_us``.
    Returns them and the next page's cursor (None: nothing older)."""
    assert who.account is not None
    redis, ns = who.gateway.redis, who.gateway.names
    key = ns.activity(who.account.id)
    high = cursor.at_us if cursor is not None else "+inf"
    low = after_us if after_us is not None else "-inf"
    offset = cursor.skip if cursor is not None else 0
    found: list[tuple[int, str, str]] = []  # (score, request id, key id)
    last: tuple[int, int] | None = None  # the last entry read: its score, and how many read had that score
    scanned, exhausted = 0, False
    while len(found) < limit and scanned < scan_limit:
        want = min(SCAN_CHUNK, scan_limit - scanned)
        chunk = await redis.zrevrangebyscore(key, high, low, start=offset, num=want, withscores=True)
        for member, score in chunk:
            offset += 1
            scanned += 1
            at = int(score)
            last = (at, last[1] + 1 if last is not None and last[0] == at else 1)
            request_id, key_id, model = parse_activity_member(member.decode() if isinstance(member, bytes) else member)
            if filters.admits(key_id, model):
                found.append((at, request_id, key_id))
                if len(found) == limit:
                    break
        else:  # the whole chunk was read: a short one was the last
            if len(chunk) < want:
                exhausted = True
                break
            continue
        break
    following: Cursor | None = None
    if not exhausted and last is not None:
        same = last[1] + (cursor.skip if cursor is not None and cursor.at_us == last[0] and last[1] == scanned else 0)
        following = Cursor(last[0], same)
    records = await redis.mget([ns.generation(request_id) for _, request_id, _ in found]) if found else []
    names = names or {}
    rows: list[Row] = []
    for (at, request_id, key_id), raw in zip(found, records):
        if raw is None:  # past its record's life
            continue
        try:
            record = generation_decoder.decode(raw)
        except msgspec.DecodeError:
            continue
        rows.append(Row(at, request_id, names.get(key_id, key_id), record))
    return rows, following


def _filters(request: Request, keys: list[KeyRecord]) -> Filters:
    key_id = request.query_params.get("key", "")
    model = request.query_params.get("model", "")[:200]
    return Filters(key_id=key_id if any(k.id == key_id for k in keys) else "", model=model)


async def activity(request: Request) -> Response:
    who = await visitor(request)
    if who.account is None:
        return who.redirect("/login")
    keys = await KeyStore(who.gateway.redis, who.gateway.names).owned(who.account.id)
    filters = _filters(request, keys)
    rows, older = await read_rows(who, filters, cursor=Cursor.parse(request.query_params.get("before")),
                                  names={k.id: k.name for k in keys})
    models = sorted({row.record.model for row in rows} | ({filters.model} if filters.model else set()))
    today = dt.datetime.now(dt.timezone.utc).date()
    return who.render("activity.html", rows=rows, keys=keys, filters=filters, models=models, older=older,
                      retention_days=GENERATION_TTL_SECONDS // 86400 - 1,
                      csv_from=(today - dt.timedelta(days=7)).isoformat(), csv_to=today.isoformat())


def _day(value: str | None, default: dt.date) -> dt.date:
    try:
        return dt.date.fromisoformat(value) if value else default
    except ValueError:
        return default


async def activity_csv(request: Request) -> Response:
    """The rows of a date range (UTC days, both included) as CSV, filtered as the page is."""
    who = await visitor(request)
    if who.account is None:
        return who.redirect("/login")
    keys = await KeyStore(who.gateway.redis, who.gateway.names).owned(who.account.id)
    today = dt.datetime.now(dt.timezone.utc).date()
    first = _day(request.query_params.get("from"), today - dt.timedelta(days=7))
    last = _day(request.query_params.get("to"), today)
    start = dt.datetime.combine(first, dt.time(), dt.timezone.utc).timestamp()
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp()
    # the range's end is exclusive: the cursor starts at its last microsecond
    rows, _ = await read_rows(who, _filters(request, keys), cursor=Cursor(int(end * 1_000_000) - 1),
                              after_us=int(start * 1_000_000),
                              limit=CSV_LIMIT, scan_limit=CSV_LIMIT, names={k.id: k.name for k in keys})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        r = row.record
        writer.writerow([_iso(r.created), r.id, _cell(row.key), r.model, r.provider, r.upstream_model,
                         r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cache_write_tokens,
                         r.reasoning_tokens, r.cost, r.latency_ms, "" if r.ttft_ms is None else r.ttft_ms, r.status, r.error_type or "",
                         r.finish_reason or "",
                         int(r.streamed)])
    headers = {**PAGE_HEADERS, "content-disposition":
               f'attachment; filename="activity-{first.isoformat()}-{last.isoformat()}.csv"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(text: str) -> str:
    """A key's name as a spreadsheet reads it safely: no cell that starts a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

