"""Shared fixtures: the Redis the suite uses, fake upstreams as real HTTP servers, and gateways.

The suite runs on a real Redis in every mode: the one at ``REDIS_URL`` when set (CI sets it), else ONE
embedded server (common/store.py) started for the session on a temporary data dir. It never touches a
Redis it was not given or did not start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import openai
import pytest
from arq.connections import ArqRedis

from api.access.keys import KeyStore
from common.names import Names
from common.redis import connect
from common.store import EmbeddedServer, StoreError

from tests.compat import pytest_configure, pytest_runtest_makereport, pytest_sessionfinish  # noqa: F401 (hooks)
from tests.windows import pytest_runtest_protocol  # noqa: F401 (hook)

pytest_plugins = ["tests.census"]  # a whole run counts its tests (tests/census.py)
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import ADMIN_KEY, GatewayHarness, access_config, env_for, with_test_key


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL``, else the session's own embedded server (a real Valkey/Redis on a unix socket)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    try:
        server = EmbeddedServer(tmp_path_factory.mktemp("store"))
        server.start()
    except StoreError as exc:
        pytest.exit(f"no Redis for the tests: {exc}", returncode=2)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def fake_openai() -> Iterator[tuple[OpenAIFakeState, str]]:
    state = OpenAIFakeState()
    with ThreadedServer(create_openai_app(state)) as server:
        yield state, server.url + "/v1"


@pytest.fixture
def gateway_env(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> dict[str, str]:
    """The gateway's environment, plus ``MEGABRAIN_TEST_API_KEY``: a real key in its namespace (paid models
    need one; the gateway itself never reads that variable)."""
    _, upstream = fake_openai
    return with_test_key(env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test"))


@pytest.fixture
def patient_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """Slow safety nets (a 60 s heartbeat timeout) and no byte before the answer, so a client's read timeout
    bounds the whole wait: a killed or stopping worker must be found by its liveness key or its own word."""
    return {**gateway_env, "MEGABRAIN_HEARTBEAT_TIMEOUT": "60", "MEGABRAIN_PICKUP_TIMEOUT": "30",
            "MEGABRAIN_REQUEST_TIMEOUT": "120",
            "MEGABRAIN_KEEPALIVE_INTERVAL": "100", "MEGABRAIN_JSON_KEEPALIVE_AFTER": "100"}


@pytest.fixture
def make_env(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
             tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Environments of a gateway behind one trusted proxy with these per-IP limits (tests/harness.py
    access_config), the admin API on."""
    def make(rpm: int = 3, per_day: int = 2) -> dict[str, str]:
        _, upstream = fake_openai
        return env_for(redis_url, MEGABRAIN_CONFIG=access_config(tmp_path, rpm=rpm, per_day=per_day),
                       OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test", MEGABRAIN_ADMIN_KEY=ADMIN_KEY)
    return make


@pytest.fixture
def gateway(gateway_env: dict[str, str]) -> Iterator[GatewayHarness]:
    with GatewayHarness.from_env(gateway_env) as harness:
        yield harness


@pytest.fixture
def client(gateway: GatewayHarness, gateway_env: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway_env["MEGABRAIN_TEST_API_KEY"],
                         max_retries=0, timeout=20)


# -- Redis-level fixtures (keys, limits, access) ------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def other_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    """A second independent client: stands for a second API process."""
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def names(redis: ArqRedis) -> AsyncIterator[Names]:
    """A fresh namespace, deleted afterwards."""
    names = Names(f"test-{uuid.uuid4().hex[:12]}")
    yield names
    keys = [k async for k in redis.scan_iter(match=f"{names.ns}:*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def store(redis: ArqRedis, names: Names) -> KeyStore:
    return KeyStore(redis, names)


@pytest.fixture
def clear_of_window_edge() -> None:
    """Marks a test that counts requests against the limits' fixed windows: one that fails while a minute
    boundary fell within its run is run once more (tests/windows.py), instead of every such test sleeping
    past boundaries."""
