"""What a worker process shares between its jobs: Redis, the HTTP client, providers, the catalog.

One instance per process, created at start-up and handed to every job through arq's ``ctx``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl
from arq.connections import ArqRedis

from common.names import Names
from common.redis import Redises
from common.settings import Settings
from router.catalog import Catalog
from router.providers import Provider
from workers.providers import adapter_for
from workers.providers.base import Adapter, Upstream
from workers.publisher import Publisher
from workers.tally import Tally
from workers.upstream import StreamTimeouts


@dataclass
class Runtime:
    settings: Settings
    names: Names
    redis: ArqRedis  # the main Redis: usage, health, uploads
    http: aiohttp.ClientSession  # upstream calls (workers/upstream.py)
    providers: dict[str, Provider]
    catalog: Catalog
    pools: tuple[str, ...]
    redises: Redises  # redises.pool(p): pool p's queue and reply events
    worker_id: str = field(default_factory=lambda: secrets.token_hex(6))
    # (request id, attempt) -> the task running it, so a cancel from the web tier can stop that attempt (a
    # request re-run on this same process has two: a cancel of the old one must not stop the new one)
    active: dict[tuple[str, int], asyncio.Task[Any]] = field(default_factory=dict)
    cancelled: set[tuple[str, int]] = field(default_factory=set)  # attempts the web tier asked us to drop
    publishers: dict[tuple[str, int], Publisher] = field(default_factory=dict)
    # counters that may wait, written in batches by the pool's ticker (provider-health successes)
    tally: Tally = field(default_factory=Tally)
    # provider -> its circuit fields in Redis, as last read (refreshed by the pool every couple of seconds)
    circuits: dict[str, dict[str, float]] = field(default_factory=dict)
    _upstreams: dict[str, Upstream] = field(default_factory=dict)

    def upstream(self, provider_id: str) -> Upstream:
        up = self._upstreams.get(provider_id)
        if up is None:
            p = self.providers[provider_id]
            up = Upstream(
                provider=p.id, kind=p.kind, base_url=encoded_url(p.base_url), api_key=p.api_key, auth=p.auth,
                api_version=p.api_version, headers=dict(p.headers), quirks=dict(p.quirks),
                default_max_tokens=self.settings.default_max_tokens,
            )
            self._upstreams[provider_id] = up
        return up

    @property
    def stream_timeouts(self) -> StreamTimeouts:
        return StreamTimeouts.of(self.settings)

    def adapter(self, provider_id: str) -> Adapter:
        return adapter_for(self.providers[provider_id].kind)

    def cancel(self, request_id: str, attempt: int) -> bool:
        key = (request_id, attempt)
        task = self.active.get(key)
        if task is None or task.done():
            return False
        self.cancelled.add(key)
        publisher = self.publishers.get(key)
        if publisher is not None:
            publisher.cancelled = True  # in case the cancel below is swallowed (Python 3.11 wait_for)
        task.cancel()
        return True


def encoded_url(url: str) -> str:
    """A configured base URL, percent-encoded once (upstream URLs are sent as written: ``RequestSpec``)."""
    return str(yarl.URL(url)) if url else url
