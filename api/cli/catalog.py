"""``megabrain models`` and ``megabrain providers``: the catalog as this deployment's settings see it.

Built locally from the environment and the config file, with the same entries as ``GET /models`` and
``GET /providers``. Provider health lives in the store: when one is reachable (``REDIS_URL``, or the
running ``megabrain serve``'s through the data dir) it is read from there, so "available" also means
"healthy"; without a store "available" means only "configured on this deployment".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from api.routes.listings import MODALITIES, model_entry, provider_entry, select_models
from common.settings import Settings
from redis.exceptions import RedisError

from router.catalog import Catalog, build_catalog
from router.health import HealthSnapshot
from router.providers import resolve_providers

HEALTH_NOTE = "health is not shown (no store is running: start `megabrain serve`, or set REDIS_URL)"


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the ``megabrain`` parser."""
    models = sub.add_parser("models", help="list the models this deployment can route to")
    models.add_argument("--provider", help="only this provider's models")
    models.add_argument("--available", action="store_true", help="only models of configured providers")
    models.add_argument("--free", action="store_true", help="only free models")
    models.add_argument("--modality", choices=(*MODALITIES, "all"), default="chat")
    models.add_argument("--json", action="store_true", help="the same JSON as GET /models")
    models.set_defaults(func=cmd_models)

    providers = sub.add_parser("providers", help="list the providers and whether each is configured")
    providers.add_argument("--json", action="store_true", help="the same JSON as GET /providers (no health)")
    providers.set_defaults(func=cmd_providers)


def _catalog(settings: Settings) -> Catalog:
    return build_catalog(settings, resolve_providers(settings))


def _health(settings: Settings, catalog: Catalog) -> HealthSnapshot | None:
    """Provider health from the store, if one is running; None without one (nothing is started for it)."""
    from api.provider_health import load_snapshot
    from common.names import Names
    from common.redis import connect
    from common.store import StoreError, reach

    async def load(url: str) -> HealthSnapshot:
        redis = connect(url, max_connections=1)
        try:
            configured = [p.id for p in catalog.providers.values() if p.configured]
            return await asyncio.wait_for(load_snapshot(redis, Names(settings.namespace), configured), 3)
        finally:
            await redis.aclose()

    try:
        with reach(settings.redis_url, settings.data_dir, start=False) as url:
            return asyncio.run(load(url))
    except (StoreError, OSError, TimeoutError, RedisError):
        return None


def cmd_models(settings: Settings, args: argparse.Namespace) -> None:
    catalog = _catalog(settings)
    if args.provider and args.provider not in catalog.providers:
        sys.exit(f"megabrain: there is no provider {args.provider!r} (see: megabrain providers)")
    health = _health(settings, catalog) if args.available else None
    models = select_models(
        catalog, modality=None if args.modality == "all" else args.modality, provider=args.provider,
        available=args.available, free=True if args.free else None, health=health,
    )
    entries = [model_entry(m) for m in models]
    if args.json:
        _print_json({"object": "list", "data": entries})
        return
    rows = [[e["id"], _context(e["context_length"]), *_prices(e["pricing"]), e["tier"], ",".join(e["capabilities"])]
            for e in entries]
    _print_table(["id", "context", "$/M in", "$/M out", "tier", "capabilities"], rows)
    sellers = {m.provider for m in models}
    configured = sum(1 for p in sellers if catalog.providers[p].configured)
    note = ("; available = configured and healthy" if health is not None else "; available = configured, "
            + HEALTH_NOTE) if args.available else ""
    print(f"\n{len(entries)} models from {len(sellers)} providers ({configured} configured here){note}",
          file=sys.stderr)


def cmd_providers(settings: Settings, args: argparse.Namespace) -> None:
    catalog = _catalog(settings)
    health = _health(settings, catalog)
    entries = [provider_entry(p, catalog, health) for p in catalog.providers.values()]
    if args.json:
        _print_json({"object": "list", "data": entries})
        return
    rows = [
        [e["id"], e["name"], e["kind"], "yes" if e["configured"] else "no", ",".join(e["capabilities"]),
         str(e["models"]), ",".join(e["needs"])]
        for e in entries
    ]
    _print_table(["id", "name", "kind", "configured", "serves", "models", "needs"], rows)
    configured = sum(1 for e in entries if e["configured"])
    print(f"\n{len(entries)} providers, {configured} configured here"
          f"{'; health from the store: see --json' if health is not None else '; ' + HEALTH_NOTE}", file=sys.stderr)


def _print_json(document: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `megabrain models | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet


def _prices(pricing: dict[str, str]) -> tuple[str, str]:
    """The table's two price cells; a model priced by audio time, character, image or search shows that
    price instead (``api/routes/listings.py`` ``pricing_of``)."""
    if "audio_per_hour" in pricing and Decimal(pricing["prompt"]) == 0:
        return f"${pricing['audio_per_hour']}/h", "-"
    if "character" in pricing:
        return f"${_per_million(pricing['character'])}/M chars", "-"
    if "image" in pricing:
        return "-", f"${pricing['image']}/image"
    if "search_unit" in pricing:
        return f"${pricing['search_unit']}/search", "-"
    return _per_million(pricing["prompt"]), _per_million(pricing["completion"])


def _per_million(price: str) -> str:
    """USD per token → USD per million tokens, the unit price lists use."""
    try:
        value = Decimal(price).scaleb(6).normalize()
    except InvalidOperation:
        return price
    return "free" if value == 0 else format(value, "f")


def _context(tokens: int | None) -> str:
    return "?" if tokens is None else f"{tokens:,}"
