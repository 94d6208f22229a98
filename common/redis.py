"""Redis connections from a URL: ``redis://``, ``rediss://``, ``unix://`` (the embedded store) or
``redis+sentinel://``.

Every client is an ``arq.connections.ArqRedis`` (a redis-py asyncio client), so every tier runs the same
code whichever Redis it gets. ``rediss://`` URLs accept self-signed certificates (Heroku Key-Value Store
presents one) unless ``ssl_cert_reqs`` is given in the URL.

``redis+sentinel://[:password@]host:26379,host2:26379/<service>[/<db>]`` asks those Sentinels for the
service's master on every new connection; after a failover the old master's connections fail (or answer
READONLY and are dropped) and the next ones reach the new master, the way they come back after a restart.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from common.mux import close_mux

if TYPE_CHECKING:
    from common.settings import Settings

SENTINEL_SCHEME = "redis+sentinel"
POOL_URL_PREFIX = "MEGABRAIN_REDIS_URL_"


def _msgpack_dumps(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def _msgpack_loads(data: bytes) -> Any:
    return msgspec.msgpack.decode(data)


# arq's job (de)serializers: msgpack, never pickle.
job_serializer = _msgpack_dumps
job_deserializer = _msgpack_loads


def connect(url: str, *, max_connections: int | None = None, pubsub: bool = False) -> ArqRedis:
    """A client for ``url``. ``pubsub`` clients have no socket read timeout: they block waiting for messages."""
    if not url:
        raise ValueError("no Redis URL: `megabrain serve` starts the embedded store and sets one")
    kwargs: dict[str, Any] = {"socket_connect_timeout": 2.0, "health_check_interval": 15}
    if max_connections:
        kwargs["max_connections"] = max_connections
    if not pubsub:
        kwargs["socket_timeout"] = 10.0
    if url.startswith(SENTINEL_SCHEME + "://"):
        pool: ConnectionPool = _sentinel_pool(url, kwargs)
    else:
        if not url.startswith("unix://"):
            kwargs["socket_keepalive"] = True
        if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
            kwargs["ssl_cert_reqs"] = "none"
        pool = ConnectionPool.from_url(url, **kwargs)
    return ArqRedis(pool_or_conn=pool, job_serializer=job_serializer, job_deserializer=job_deserializer)


def _sentinel_pool(url: str, kwargs: dict[str, Any]) -> SentinelConnectionPool:
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL needs the service name: "
                         f"{SENTINEL_SCHEME}://host:26379,host2:26379/mymaster/0")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        sentinels.append((host, int(port or 26379)))
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if len(path) > 1:
        kwargs["db"] = int(path[1])
    sentinel_kwargs = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0}
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    return SentinelConnectionPool(path[0], manager, is_master=True, **kwargs)


def pool_url(settings: "Settings", pool: str) -> str:
    """Which Redis serves ``pool``: ``MEGABRAIN_REDIS_URL_<POOL>`` (``-``/``.`` spelled ``_``), else REDIS_URL."""
    variable = POOL_URL_PREFIX + re.sub(r"[^A-Z0-9]", "_", pool.upper())
    return settings.env.get(variable) or settings.redis_url or ""


class Redises:
    """The Redis clients of one process, one per distinct URL, made on first use.

    ``main`` (REDIS_URL) holds keys, limits, usage, health and metrics. ``pool(p)`` serves pool ``p``'s
    queue, wake-ups, worker liveness, control and reply events: another Redis when
    ``MEGABRAIN_REDIS_URL_<POOL>`` says so, which is how queues spread past one Redis's throughput.
    """

    def __init__(self, settings: "Settings", **connect_kwargs: Any) -> None:
        self.settings = settings
        self.connect_kwargs = connect_kwargs
        self._clients: dict[str, ArqRedis] = {}

    def at(self, url: str) -> ArqRedis:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = connect(url, **self.connect_kwargs)
        return client

    @property
    def main(self) -> ArqRedis:
        return self.at(self.settings.redis_url or "")

    def pool(self, pool: str) -> ArqRedis:
        return self.at(pool_url(self.settings, pool))

    def by_redis(self, pools: "list[str] | tuple[str, ...]") -> list[tuple[ArqRedis, list[str]]]:
        """``pools`` grouped by the Redis that serves them (the main one alone when there are none)."""
        groups: dict[str, list[str]] = {}
        for pool in pools:
            groups.setdefault(pool_url(self.settings, pool), []).append(pool)
        if not groups:
            groups[self.settings.redis_url or ""] = []
        return [(self.at(url), members) for url, members in groups.items()]

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await close_mux(client)
            await client.aclose()


async def ping(redis: ArqRedis, timeout: float = 1.0) -> bool:
    try:
        return bool(await asyncio.wait_for(redis.ping(), timeout))
    except Exception:
        return False
