"""A pool's queue on its own Redis (``MEGABRAIN_REDIS_URL_<POOL>``): two Redis servers, one pool on each.

Chat and streams flow through both; the pool's queue, wake-ups, liveness and reply events live on its
Redis, while keys and usage stay on ``REDIS_URL``; a worker killed on one does not disturb the other.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis as sync_redis

from common.names import Names
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, ProcessGateway, RedisServer, create_key, env_for, reassemble, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]

CONFIG = """
[providers.local2]
kind = "openai"
base_url = "{upstream}"

[[models]]
id = "local2/tiny2"
provider = "local2"
upstream_id = "tiny2"
context_length = 8192
pricing = {{ prompt = "0.000001", completion = "0.000001" }}
"""


@pytest.fixture
def two_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    main, other = RedisServer().start(), RedisServer().start()
    try:
        yield main, other
    finally:
        main.stop()
        other.stop()


def live(url: str, pool: str) -> int:
    try:
        return httpx.get(url + "/ready", timeout=2).json()["pools"][pool]["live_workers"]
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def serves(client: openai.OpenAI, model: str) -> bool:
    try:
        answer = client.chat.completions.create(model=model, messages=MESSAGES)
        chunks = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        streamed = reassemble(chunks)["text"]
    except openai.APIError:
        return False
    return answer.choices[0].message.content == EXPECTED and streamed == EXPECTED


def keys_of(server: RedisServer, namespace: str) -> set[str]:
    client = sync_redis.Redis(port=server.port, decode_responses=True)
    return set(client.scan_iter(match=f"{namespace}:*"))


def test_a_pool_on_its_own_redis(two_redis: tuple[RedisServer, RedisServer], tmp_path: Path,
                                 fake_openai: tuple[OpenAIFakeState, str]) -> None:
    main, other = two_redis
    config = tmp_path / "megabrain.toml"
    config.write_text(CONFIG.format(upstream=fake_openai[1]))
    env = env_for(main.url, OPENAI_BASE_URL=fake_openai[1], OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_CONFIG=str(config), MEGABRAIN_REDIS_URL_LOCAL2=other.url)
    namespace = env["MEGABRAIN_NAMESPACE"]

    key = create_key(main.url, namespace)
    with ProcessGateway(env, worker_providers="openai,local2", workers=0) as gw:
        for pools in ("openai", "local2"):
            gw.workers.append(gw._spawn("worker", "--providers", pools))
        assert wait_until(lambda: live(gw.url, "openai") == 1 and live(gw.url, "local2") == 1, 30)
        client = openai.OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=15)
        assert serves(client, "openai/gpt-4o-mini")
        assert serves(client, "local2/tiny2")

        # the pool's liveness is on its Redis; keys and usage only on REDIS_URL
        names = Names(namespace)
        on_other, on_main = keys_of(other, namespace), keys_of(main, namespace)
        assert names.live_workers("local2") in on_other and names.live_workers("local2") not in on_main
        assert names.live_workers("openai") in on_main and names.live_workers("openai") not in on_other
        assert all(k.startswith((f"{namespace}:live:", f"{namespace}:queue:")) for k in on_other), on_other
        def used_models() -> set[str]:  # usage is written before the answer (the settlement, on REDIS_URL)
            usage = httpx.get(gw.url + "/usage", headers={"authorization": f"Bearer {key}"}, timeout=5).json()
            return {row["model"] for row in usage["data"]}

        assert used_models() == {"openai/gpt-4o-mini", "local2/tiny2"}

        # a worker killed on one Redis does not disturb the pool on the other
        killed = gw.workers[1]
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        for _ in range(3):
            assert serves(client, "openai/gpt-4o-mini")
        assert wait_until(lambda: live(gw.url, "local2") == 0, 20)
        refused = httpx.post(gw.url + "/v1/chat/completions", json={"model": "local2/tiny2", "messages": MESSAGES},
                             headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error_type"] == "temporarily_unavailable"
        gw.workers.append(gw._spawn("worker", "--providers", "local2"))
        assert wait_until(lambda: live(gw.url, "local2") == 1, 30)
        assert serves(client, "local2/tiny2")
        assert serves(client, "openai/gpt-4o-mini")


def test_a_hand_off_crosses_to_the_other_redis(two_redis: tuple[RedisServer, RedisServer], tmp_path: Path,
                                               fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """openai (on REDIS_URL) fails; the worker hands the job to local2's queue on the other Redis, whose
    events reach the web process through its second relay subscription."""
    from tests.harness import GatewayHarness

    main, other = two_redis
    state, upstream = fake_openai
    config = tmp_path / "megabrain.toml"
    config.write_text(CONFIG.format(upstream=upstream))
    env = env_for(main.url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_CONFIG=str(config), MEGABRAIN_REDIS_URL_LOCAL2=other.url,
                  MEGABRAIN_UPSTREAM_MAX_RETRIES="0")

    key = create_key(main.url, env["MEGABRAIN_NAMESPACE"])
    with GatewayHarness.from_env(env, pools=("openai", "local2")) as gw:
        client = openai.OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=15)
        for stream in (False, True):
            state.failures = [503]
            response = client.chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini", messages=MESSAGES, stream=stream, extra_body={"models": ["local2/tiny2"]})
            assert response.headers["x-megabrain-provider"] == "local2"
            if stream:
                text = reassemble(response.parse())["text"]
            else:
                text = response.parse().choices[0].message.content
            assert text == EXPECTED


def test_which_redis_serves_a_pool() -> None:
    from common.redis import Redises, pool_url
    from common.settings import load_settings

    settings = load_settings(env={"REDIS_URL": "redis://main:6379/0", "MEGABRAIN_CONFIG": "/dev/null",
                                  "MEGABRAIN_REDIS_URL_OPENAI": "redis://q1:6379/0",
                                  "MEGABRAIN_REDIS_URL_LM_STUDIO": "redis://q2:6379/0"})
    assert pool_url(settings, "openai") == "redis://q1:6379/0"
    assert pool_url(settings, "lm-studio") == "redis://q2:6379/0"
    assert pool_url(settings, "anthropic") == "redis://main:6379/0"
    redises = Redises(settings)
    assert redises.pool("anthropic") is redises.main and redises.pool("openai") is not redises.main
    groups = {tuple(pools) for _, pools in redises.by_redis(["openai", "anthropic", "groq", "lm-studio"])}
    assert groups == {("openai",), ("anthropic", "groq"), ("lm-studio",)}
    assert [pools for _, pools in redises.by_redis([])] == [[]]  # no pools: the main Redis alone
