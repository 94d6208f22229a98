"""``megabrain keys create|list|revoke|usage``.

The command talks to the store directly: the Redis at ``REDIS_URL``, else the embedded store of the data
dir (``MEGABRAIN_DATA_DIR``), through its unix socket: the running ``megabrain serve``'s, or one started
for the length of the command. No admin key is needed there; the socket's file permissions guard it.
``--url`` goes through a running gateway's admin API instead (authorised by ``MEGABRAIN_ADMIN_KEY``).

Both paths return the admin API's JSON shapes, so the printing below is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any, Protocol

import httpx

from common.names import Names
from common.settings import Settings

NO_ADMIN_KEY = "--url goes through the gateway's admin API: set MEGABRAIN_ADMIN_KEY to the server's admin key"


class KeysError(Exception):
    """A failure worth one clear line to the operator (exit status 1)."""


class Backend(Protocol):
    def create(self, name: str, rpm: int | None, budget: float | None) -> dict[str, Any]: ...
    def list(self) -> list[dict[str, Any]]: ...
    def revoke(self, key_id: str) -> dict[str, Any]: ...
    def usage(self, key_id: str, days: int) -> dict[str, Any]: ...


class RedisBackend:
    """Direct access to the key store: the Redis at ``REDIS_URL``, or the data dir's embedded store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _run(self, job: Any) -> Any:
        from api.access.keys import KeyStore
        from common.redis import connect
        from common.store import StoreError, reach

        async def main(url: str) -> Any:
            redis = connect(url)
            try:
                return await job(KeyStore(redis, Names(self.settings.namespace)))
            finally:
                await redis.aclose()

        try:
            with reach(self.settings.redis_url, self.settings.data_dir) as url:
                return asyncio.run(main(url))
        except StoreError as exc:
            raise KeysError(str(exc)) from None

    def create(self, name: str, rpm: int | None, budget: float | None) -> dict[str, Any]:
        from api.routes.admin import key_json

        async def job(store: Any) -> dict[str, Any]:
            record, plaintext = await store.create(name, rpm, budget)
            return {**key_json(record), "key": plaintext}

        return self._run(job)

    def list(self) -> list[dict[str, Any]]:
        from api.routes.admin import key_json

        async def job(store: Any) -> list[dict[str, Any]]:
            records = await store.list()
            spends = await store.month_spends([r.id for r in records])
            return [key_json(r, spends.get(r.id, 0.0)) for r in records]

        return self._run(job)

    def revoke(self, key_id: str) -> dict[str, Any]:
        async def job(store: Any) -> bool:
            return bool(await store.revoke(key_id))

        if not self._run(job):
            raise KeysError(f"there is no key with id {key_id!r}")
        return {"id": key_id, "revoked": True}

    def usage(self, key_id: str, days: int) -> dict[str, Any]:
        from api.routes.admin import usage_json
        from common.usage import ANONYMOUS

        async def job(store: Any) -> dict[str, Any] | None:
            if key_id != ANONYMOUS and await store.get(key_id) is None:
                return None
            return usage_json(key_id, await store.usage(key_id, days), await store.month_spend(key_id))

        result = self._run(job)
        if result is None:
            raise KeysError(f"there is no key with id {key_id!r}")
        return result


class HttpBackend:
    """The admin API of a running gateway (``--url``), perhaps on another machine."""

    def __init__(self, url: str, admin_key: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Bearer {admin_key}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = httpx.request(method, self.url + path, headers=self.headers, timeout=10, **kwargs)
        except httpx.HTTPError as exc:
            raise KeysError(f"cannot reach the gateway at {self.url} ({type(exc).__name__}); is "
                            "`megabrain serve` running there? (--url to point elsewhere)") from None
        if response.status_code == 401:
            raise KeysError(f"the gateway at {self.url} refused the admin key (MEGABRAIN_ADMIN_KEY differs)")
        if response.status_code >= 400:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            if response.status_code == 404 and message.startswith("There is no route"):
                message = f"the gateway at {self.url} has no admin API: start it with MEGABRAIN_ADMIN_KEY set"
            raise KeysError(message)
        return response.json()

    def create(self, name: str, rpm: int | None, budget: float | None) -> dict[str, Any]:
        return self._call("POST", "/admin/keys", json={"name": name, "rpm": rpm, "monthly_budget": budget})

    def list(self) -> list[dict[str, Any]]:
        return self._call("GET", "/admin/keys")["data"]

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/admin/keys/{key_id}")

    def usage(self, key_id: str, days: int) -> dict[str, Any]:
        return self._call("GET", f"/admin/keys/{key_id}/usage", params={"days": days})


def backend_for(settings: Settings, url: str | None) -> Backend:
    if not url:
        return RedisBackend(settings)
    if not settings.admin_key:
        raise KeysError(NO_ADMIN_KEY)
    return HttpBackend(url, settings.admin_key)


# --- printing ---------------------------------------------------------------------------------------------


def _when(epoch: int | None) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _opt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def print_keys(keys: list[dict[str, Any]]) -> None:
    rows = [
        [k["id"], k["name"], k["prefix"] + "…", _when(k["created"]), _when(k["last_used"]), _opt(k["rpm"]),
         _opt(k["monthly_budget"]), f"{k.get('month_spend') or 0:.6f}".rstrip("0").rstrip("."),
         "revoked" if k["revoked"] else "active", k.get("owner") or "-"]
        for k in keys
    ]
    print(_table(["ID", "NAME", "PREFIX", "CREATED (UTC)", "LAST USED", "RPM", "BUDGET $", "MONTH $", "STATUS",
                  "OWNER"],
                 rows))


def print_usage(usage: dict[str, Any]) -> None:
    rows = [
        [r["day"], r["model"], str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]), r["cost"]]
        for r in usage["data"]
    ]
    print(_table(["DAY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "COST $"], rows))
    print(f"month to date: ${usage['month_spend']:g}")


# --- commands ---------------------------------------------------------------------------------------------


def cmd_keys(settings: Settings, args: argparse.Namespace) -> None:
    try:
        backend = backend_for(settings, args.url)
        run_command(backend, args)
    except KeysError as exc:
        text = str(exc)
        print(text if text.startswith("megabrain:") else f"megabrain: {text}", file=sys.stderr)
        raise SystemExit(1) from None


def run_command(backend: Backend, args: argparse.Namespace) -> None:
    if args.keys_command == "create":
        from api.routes.admin import key_spec
        from common.errors import GatewayError

        try:  # the admin API's bounds, also when writing to Redis directly
            spec = key_spec(json.dumps({"name": args.name, "rpm": args.rpm,
                                        "monthly_budget": args.monthly_budget}).encode())
        except GatewayError as exc:
            raise KeysError(exc.message) from None
        created = backend.create(spec.name, spec.rpm, spec.monthly_budget)
        if args.json:
            print(json.dumps(created))
            return
        print(created["key"])  # alone on stdout, so `KEY=$(megabrain keys create --name x)` works
        print(f"created key {created['id']} ({created['name']}); it is shown only this once.", file=sys.stderr)
    elif args.keys_command == "list":
        keys = backend.list()
        if args.json:
            print(json.dumps(keys))
        else:
            print_keys(keys)
    elif args.keys_command == "revoke":
        result = backend.revoke(args.key_id)
        print(json.dumps(result) if args.json else f"revoked {result['id']}")
    elif args.keys_command == "usage":
        usage = backend.usage(args.key_id, args.days)
        if args.json:
            print(json.dumps(usage))
        else:
            print_usage(usage)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the ``megabrain`` parser."""
    keys = sub.add_parser("keys", help="manage API keys (in REDIS_URL or the data dir's store, or via --url)")
    keys.set_defaults(func=cmd_keys)
    actions = keys.add_subparsers(dest="keys_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--url", help="go through a running gateway's admin API at this base URL "
                                          "(needs MEGABRAIN_ADMIN_KEY)")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return parser

    create = common(actions.add_parser("create", help="create a key and print it (only this once)"))
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=int, help="requests per minute allowed to this key")
    create.add_argument("--monthly-budget", type=float, metavar="USD", help="spend allowed per UTC month")
    common(actions.add_parser("list", help="every key: id, name, prefix, created, last used, usage"))
    revoke = common(actions.add_parser("revoke", help="revoke a key (effective everywhere within a second)"))
    revoke.add_argument("key_id", metavar="ID")
    usage = common(actions.add_parser("usage", help="a key's usage per day and model ('anonymous' = no key)"))
    usage.add_argument("key_id", metavar="ID")
    usage.add_argument("--days", type=int, default=30, help="how many UTC days back (default 30)")
