"""Shared fixtures: the Redis the suite uses, fake upstreams as real HTTP servers, and gateways."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, env_for


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    """The real Redis when ``REDIS_URL`` is set (CI sets it), else None: the embedded in-memory one."""
    return os.environ.get("REDIS_URL") or None


@pytest.fixture
def fake_openai() -> Iterator[tuple[OpenAIFakeState, str]]:
    state = OpenAIFakeState()
    with ThreadedServer(create_openai_app(state)) as server:
        yield state, server.url + "/v1"


@pytest.fixture
def gateway_env(redis_url: str | None, fake_openai: tuple[OpenAIFakeState, str]) -> dict[str, str]:
    """The gateway's environment, plus ``MEGABRAIN_TEST_API_KEY``: a real key in its namespace (paid models
    need one; the gateway itself never reads that variable)."""
    _, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test")

    async def create_key() -> str:
        from api.keys import KeyStore
        from common.names import Names
        from common.redis import connect

        redis = connect(redis_url)  # the embedded server is per process, so the harness shares it
        try:
            _, plaintext = await KeyStore(redis, Names(env["MEGABRAIN_NAMESPACE"])).create("tests")
        finally:
            await redis.aclose()
        return plaintext

    env["MEGABRAIN_TEST_API_KEY"] = asyncio.run(create_key())
    return env


@pytest.fixture
def gateway(gateway_env: dict[str, str]) -> Iterator[GatewayHarness]:
    with GatewayHarness.from_env(gateway_env) as harness:
        yield harness


@pytest.fixture
def client(gateway: GatewayHarness, gateway_env: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway_env["MEGABRAIN_TEST_API_KEY"],
                         max_retries=0, timeout=20)
