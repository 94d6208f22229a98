"""``megabrain credits grant|adjust|show|ledger``: an account's prepaid credits, for the operator.

Like ``megabrain keys``, the command talks to the store directly (the Redis at ``REDIS_URL``, else the
data dir's embedded store). An account is named by its id or by its email (looked up through the keyed
email index, so ``MEGABRAIN_SECRET`` must be the web tier's). Every change is a ledger entry
(``common/ledger.py``); ``--id`` makes a grant idempotent (run it twice, it is applied once).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from common.names import Names
from common.settings import ConfigError, Settings


class CreditsError(Exception):
    """A failure worth one clear line to the operator (exit status 1)."""


def _run(settings: Settings, job: Callable[[Any, Names, str], Awaitable[Any]]) -> Any:
    from common.redis import connect
    from common.store import StoreError, reach

    async def main(url: str) -> Any:
        redis = connect(url)
        try:
            return await job(redis, Names(settings.namespace), url)
        finally:
            await redis.aclose()

    try:
        with reach(settings.redis_url, settings.data_dir) as url:
            return asyncio.run(main(url))
    except StoreError as exc:
        raise CreditsError(str(exc)) from None


async def resolve_account(redis: Any, names: Names, settings: Settings, url: str, who: str) -> str:
    """The account id of ``who``: an account id, or the email of an account."""
    from api.access.accounts import AccountStore, HashingSlots
    from common.server_secret import server_secret

    if "@" not in who:
        if await redis.exists(names.account(who)):
            return who
        raise CreditsError(f"there is no account with id {who!r}")
    try:
        secret = server_secret(msgspec.structs.replace(settings, redis_url=url))
    except ConfigError as exc:
        raise CreditsError(f"cannot look up an email: {exc}") from None
    account = await AccountStore(redis, names, secret, HashingSlots()).find(who)
    if account is None:
        raise CreditsError("there is no account with that email (is MEGABRAIN_SECRET the web tier's?)")
    return account.id


def cmd_credits(settings: Settings, args: argparse.Namespace) -> None:
    try:
        result = run_command(settings, args)
    except CreditsError as exc:
        print(f"megabrain: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps(result))
    elif args.credits_command == "ledger":
        for e in result["data"]:
            when = dt.datetime.fromtimestamp(e["time"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{when}  {e['kind']:<7} {e['amount']:>14}  {e['id']}  {e['model'] or e['note']}")
        print(f"balance: ${result['balance']['balance']}")
    else:
        b = result["balance"] if "balance" in result and isinstance(result["balance"], dict) else result
        print(f"account {b['account']}: balance ${b['balance']} (held by requests in flight ${b['held']}; "
              f"credited ${b['total_credits']}, used ${b['total_usage']})")


def run_command(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from common.ledger import Ledger, LedgerError, nanos

    async def job(redis: Any, names: Names, url: str) -> dict[str, Any]:
        account = await resolve_account(redis, names, settings, url, args.account)
        ledger = Ledger(redis, names)
        if args.credits_command in ("grant", "adjust"):
            try:
                amount = nanos(args.usd)
                if args.credits_command == "grant" and amount <= 0:
                    raise LedgerError("a grant is a positive amount (use `credits adjust` to take credit away)")
                applied = await ledger.apply(account, args.credits_command, amount, note=args.note or "",
                                             entry_id=args.id or "")
            except LedgerError as exc:
                raise CreditsError(str(exc)) from None
            result = {"applied": applied.applied, "duplicate": applied.duplicate}
            result["balance"] = (await ledger.balance(account)).as_json(account)
            return result
        if args.credits_command == "ledger":
            entries = await ledger.entries(account, args.limit)
            return {"data": [e.as_json() for e in entries], "balance": (await ledger.balance(account)).as_json(account)}
        return (await ledger.balance(account)).as_json(account)

    return _run(settings, job)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the ``megabrain`` parser."""
    credits = sub.add_parser("credits", help="accounts' prepaid credits: grant, adjust, show, ledger")
    credits.set_defaults(func=cmd_credits)
    actions = credits.add_subparsers(dest="credits_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("account", metavar="ACCOUNT_OR_EMAIL")
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    for name, text in (("grant", "add credit to an account (USD, positive)"),
                       ("adjust", "correct an account's credit (USD, either sign; never below zero)")):
        parser = common(actions.add_parser(name, help=text))
        parser.add_argument("usd", metavar="USD", help="exact decimal, e.g. 5 or 0.25")
        parser.add_argument("--note", default="", help="why (kept in the ledger)")
        parser.add_argument("--id", help="an id of your own: the entry is applied once under it")
    common(actions.add_parser("show", help="balance, held, total credited and used"))
    ledger = common(actions.add_parser("ledger", help="the newest ledger entries"))
    ledger.add_argument("--limit", type=int, default=50)
