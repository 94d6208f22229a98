"""Redis connections: a real server from ``REDIS_URL``, or the embedded in-memory one (fakeredis).

Both give an ``arq.connections.ArqRedis`` (a redis-py asyncio client), so every tier runs the same code
whichever it gets. ``rediss://`` URLs accept self-signed certificates (Heroku Key-Value Store presents one)
unless ``ssl_cert_reqs`` is given in the URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

# The one embedded server of this process: `megabrain serve` shares it between the API and the pools.
_embedded_server: Any = None


def _msgpack_dumps(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def _msgpack_loads(data: bytes) -> Any:
    return msgspec.msgpack.decode(data)


# arq's job (de)serializers: msgpack, never pickle.
job_serializer = _msgpack_dumps
job_deserializer = _msgpack_loads


def embedded_server() -> Any:
    global _embedded_server
    if _embedded_server is None:
        from fakeredis import FakeServer

        _embedded_server = FakeServer()
    return _embedded_server


def connect(url: str | None, *, max_connections: int | None = None, pubsub: bool = False) -> ArqRedis:
    """A client for ``url``, or for the embedded server when ``url`` is empty.

    ``pubsub`` clients have no socket read timeout: they block waiting for messages.
    """
    kwargs: dict[str, Any] = {}
    if max_connections:
        kwargs["max_connections"] = max_connections
    if not url:
        from fakeredis.aioredis import FakeConnection

        _patch_arq_for_fakeredis()
        pool = ConnectionPool(connection_class=FakeConnection, server=embedded_server(), **kwargs)
        return ArqRedis(
            pool_or_conn=pool, job_serializer=job_serializer, job_deserializer=job_deserializer
        )
    kwargs.update(socket_connect_timeout=2.0, health_check_interval=15, socket_keepalive=True)
    if not pubsub:
        kwargs["socket_timeout"] = 10.0
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        kwargs["ssl_cert_reqs"] = "none"
    pool = ConnectionPool.from_url(url, **kwargs)
    return ArqRedis(pool_or_conn=pool, job_serializer=job_serializer, job_deserializer=job_deserializer)


_patched = False


def _patch_arq_for_fakeredis() -> None:
    """fakeredis has no INFO command, which arq calls once at worker start-up to log the server version."""
    global _patched
    if _patched:
        return
    import arq.worker

    async def _no_info(*_: Any, **__: Any) -> None:
        return None

    arq.worker.log_redis_info = _no_info
    _patched = True


async def ping(redis: ArqRedis, timeout: float = 1.0) -> bool:
    try:
        return bool(await asyncio.wait_for(redis.ping(), timeout))
    except Exception:
        return False
