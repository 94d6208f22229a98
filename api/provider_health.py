"""Loading the provider-health snapshot the router reads, from the counts workers keep in Redis."""

from __future__ import annotations

from arq.connections import ArqRedis

from common.names import Names
from router.health import HealthSnapshot


async def load_snapshot(redis: ArqRedis, names: Names, providers: list[str]) -> HealthSnapshot:
    return HealthSnapshot()
