"""``REDIS_URL=rediss://…`` with a self-signed certificate works (README, Configuration): a Redis behind TLS
presenting a certificate this test makes, as Heroku Key-Value Store presents its own. ``common/redis.py``
connects with ``ssl_cert_reqs=none`` unless the URL says otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import (EXPECTED, GatewayHarness, RedisServer, TLSProxy, env_for, reassemble, sdk_for,
                           self_signed_cert, with_test_key)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TLSProxy]:
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("no openssl command to make a self-signed certificate")
    server = RedisServer().start()
    try:
        with TLSProxy(server.port, *made) as proxy:
            yield proxy
    finally:
        server.stop()


async def _ping(url: str) -> bool:
    client = connect(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def test_rediss_accepts_a_self_signed_certificate(tls_redis: TLSProxy) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    assert asyncio.run(_ping(url))
    assert tls_redis.handshakes >= 1  # it was TLS, through the proxy
    # the certificate cannot be verified: asking for verification in the URL is refused, so the default
    # above really is "encrypted, server not authenticated"
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(_ping(url + "?ssl_cert_reqs=required"))


def test_a_gateway_runs_on_rediss(tls_redis: TLSProxy, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Limits, the queue, the hot path's connection, the relay's subscription and the workers, all over TLS."""
    _, upstream = fake_openai
    env = with_test_key(env_for(f"rediss://127.0.0.1:{tls_redis.port}/0", OPENAI_BASE_URL=upstream,
                                OPENAI_API_KEY="sk-upstream-test"))
    with GatewayHarness.from_env(env) as gateway:
        client = sdk_for(gateway.url, env)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": "hi"}]).choices[0].message.content == EXPECTED
        stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        assert reassemble(stream)["text"] == EXPECTED
