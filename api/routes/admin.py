"""Key and credit management over HTTP, plus ``GET /usage`` for a key's own usage.

The admin routes exist only when ``MEGABRAIN_ADMIN_KEY`` is set (404 otherwise, so a deployment without
one shows no admin surface at all) and want ``Authorization: Bearer <admin key>``, compared in constant
time, wrong keys limited per client IP and logged (``api/access/admin_auth.py``). This is also how ``megabrain keys …`` manages keys of a ``megabrain serve`` running on the embedded
store, which no other process can reach.

    POST   /admin/keys                {"name": "...", "rpm": 60, "monthly_budget": 10}  → the key, once
    GET    /admin/keys                every key (never the key itself)
    DELETE /admin/keys/{key_id}       revoke
    GET    /admin/keys/{key_id}/usage?days=30
    GET    /usage?days=30             the calling key's own usage
    GET    /admin/credits/{account}?limit=50   an account's prepaid credits and newest ledger entries
    POST   /admin/credits/{account}   {"amount": "5.00", "kind": "grant"|"adjust", "note": "…", "id": "…"}
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.access.admin_auth import require_key
from api.access.check import bearer_token
from api.exchange.body import decode_json, read_body
from api.gateway import Gateway
from api.access.keys import KeyRecord, KeyStore, UsageRow
from common.errors import GatewayError, invalid
from common.ledger import Ledger, LedgerError, nanos
from common.usage import ANONYMOUS

MAX_USAGE_DAYS = 366
MAX_KEY_NAME = 200  # characters
MAX_RPM = 1_000_000
MAX_MONTHLY_BUDGET = 1_000_000_000.0  # USD


class CreateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new key's settings, bounded: whatever is stored here is later read on every request."""

    name: Annotated[str, msgspec.Meta(max_length=MAX_KEY_NAME)]
    rpm: Annotated[int, msgspec.Meta(ge=1, le=MAX_RPM)] | None = None
    monthly_budget: Annotated[float, msgspec.Meta(ge=0, le=MAX_MONTHLY_BUDGET)] | None = None


def key_spec(raw: bytes) -> CreateKey:
    """The validated settings of a new key (``GatewayError`` 400 naming the field otherwise); the admin
    API and ``megabrain keys create`` both go through here."""
    spec = decode_json(raw, CreateKey)
    if not spec.name.strip():
        raise invalid("name must not be empty.", param="name")
    return msgspec.structs.replace(spec, name=spec.name.strip())


def key_json(record: KeyRecord, month_spend: float | None = None) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "created": int(record.created),
        "last_used": int(record.last_used) if record.last_used else None,
        "rpm": record.rpm,
        "monthly_budget": record.monthly_budget,
        "revoked": record.revoked,
        "owner": record.owner,
        "month_spend": month_spend,
    }


def usage_json(key_id: str, rows: list[UsageRow], month_spend: float) -> dict[str, Any]:
    return {
        "object": "list",
        "key_id": key_id,
        "month_spend": month_spend,
        "data": [msgspec.to_builtins(row) for row in rows],
    }


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status_code=status, media_type="application/json")


def _store(request: Request) -> KeyStore:
    gateway: Gateway = request.app.state.gateway
    return KeyStore(gateway.redis, gateway.names)


async def require_admin(request: Request) -> None:
    """404 when no admin key is configured; 401 unless the caller presents it; 429 after too many wrong
    keys from its address (``api/access/admin_auth.py``)."""
    gateway: Gateway = request.app.state.gateway
    await require_key(gateway, request, [gateway.settings.admin_key], "the admin key ($MEGABRAIN_ADMIN_KEY)")


def _days(request: Request) -> int:
    raw = request.query_params.get("days", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_USAGE_DAYS:
        raise invalid(f"days must be a whole number from 1 to {MAX_USAGE_DAYS}.", param="days")
    return int(raw)


async def create_key(request: Request) -> Response:
    await require_admin(request)
    gateway: Gateway = request.app.state.gateway
    spec = key_spec(await read_body(request, gateway.settings.limits.max_body_bytes))
    record, plaintext = await _store(request).create(spec.name, spec.rpm, spec.monthly_budget)
    return _json({**key_json(record), "key": plaintext}, status=201)


async def list_keys(request: Request) -> Response:
    await require_admin(request)
    store = _store(request)
    records = await store.list()
    spends = await store.month_spends([r.id for r in records])
    return _json({"object": "list", "data": [key_json(r, spends.get(r.id, 0.0)) for r in records]})


async def revoke_key(request: Request) -> Response:
    await require_admin(request)
    key_id = request.path_params["key_id"]
    if not await _store(request).revoke(key_id):
        raise GatewayError("not_found", f"There is no key with id {key_id!r}.")
    return _json({"id": key_id, "revoked": True})


async def key_usage(request: Request) -> Response:
    await require_admin(request)
    key_id = request.path_params["key_id"]
    store = _store(request)
    days = _days(request)
    if key_id != ANONYMOUS and await store.get(key_id) is None:
        raise GatewayError("not_found", f"There is no key with id {key_id!r}.")
    return _json(usage_json(key_id, await store.usage(key_id, days), await store.month_spend(key_id)))


async def presented_key(request: Request, what: str) -> KeyRecord:
    """The caller's own key record, looked up uncached so a revoked key is refused at once; 401 otherwise."""
    token = bearer_token(request.headers.get("authorization"))
    record = await _store(request).lookup(token) if token else None
    if record is None or record.revoked:
        raise GatewayError("authentication_required", f"Send your API key as 'Authorization: Bearer mb-...' {what}.")
    return record


async def own_usage(request: Request) -> Response:
    """The presented key's own usage."""
    record = await presented_key(request, "to see its usage")
    store = _store(request)
    days = _days(request)
    return _json(usage_json(record.id, await store.usage(record.id, days), await store.month_spend(record.id)))


class CreditChange(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /admin/credits/{account}``: a grant (positive) or an adjustment (either sign), USD as a string."""

    amount: str
    kind: str = "grant"
    note: str = ""
    id: str = ""  # the entry is applied once under it (a retried call)


async def account_credits(request: Request) -> Response:
    """An account's balance and newest ledger entries (``?limit=``, at most 1000)."""
    await require_admin(request)
    gateway: Gateway = request.app.state.gateway
    account = await _account(request)
    raw = request.query_params.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise invalid("limit must be a whole number from 1 to 1000.", param="limit")
    ledger = Ledger(gateway.redis, gateway.names)
    return _json({"balance": (await ledger.balance(account)).as_json(account),
                  "data": [e.as_json() for e in await ledger.entries(account, int(raw))]})


async def change_credits(request: Request) -> Response:
    """A grant or adjustment to an account's credits, as ``megabrain credits grant|adjust`` does."""
    await require_admin(request)
    gateway: Gateway = request.app.state.gateway
    account = await _account(request)
    try:
        body = await read_body(request, gateway.settings.limits.max_body_bytes)
        change = msgspec.json.decode(body, type=CreditChange)
        amount = nanos(change.amount)
        if change.kind not in ("grant", "adjust") or (change.kind == "grant" and amount <= 0):
            raise LedgerError("kind is 'grant' (a positive amount) or 'adjust' (either sign)")
        ledger = Ledger(gateway.redis, gateway.names)
        applied = await ledger.apply(account, change.kind, amount, note=change.note, entry_id=change.id[:200])
    except msgspec.ValidationError as exc:
        raise invalid(f"Invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise invalid("The body must be JSON: {\"amount\": \"5.00\", \"kind\": \"grant\", \"note\": \"…\"}.") from None
    except LedgerError as exc:
        raise invalid(str(exc), param="amount") from None
    return _json({"applied": applied.applied, "duplicate": applied.duplicate,
                  "balance": (await ledger.balance(account)).as_json(account)})


async def _account(request: Request) -> str:
    gateway: Gateway = request.app.state.gateway
    account = request.path_params["account"]
    if not await gateway.redis.exists(gateway.names.account(account)):
        raise GatewayError("not_found", f"There is no account with id {account!r}.")
    return account


ROUTES = [
    ("POST", "/admin/keys", create_key),
    ("GET", "/admin/credits/{account}", account_credits),
    ("POST", "/admin/credits/{account}", change_credits),
    ("GET", "/admin/keys", list_keys),
    ("DELETE", "/admin/keys/{key_id}", revoke_key),
    ("GET", "/admin/keys/{key_id}/usage", key_usage),
    ("GET", "/usage", own_usage),
]
