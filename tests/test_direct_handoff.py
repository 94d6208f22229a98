"""Direct hand-off: the admission script gives an idle worker process its job on the worker's control
channel (``api/access/limits.py``, ``workers/pool.py``), and every failure of that path ends in the queue.

The tests count commands with ``INFO commandstats``, which is server-wide: the module runs on a Redis of its
own (``redis_url`` below), so nothing else that uses the suite's Redis can move the counts.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis

from common.names import Names
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, ProcessGateway, RedisServer, auth, wait_until

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's own Redis, in place of the suite's (tests/conftest.py) for every fixture built on it."""
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


def _calls(client: sync_redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def _idle(client: sync_redis.Redis, names: Names) -> list[bytes]:
    return client.zrange(names.idle_workers("openai"), 0, -1)


def test_an_idle_worker_gets_sequential_requests_without_the_queue(
        gateway: GatewayHarness, gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    names = Names(gateway_env["MEGABRAIN_NAMESPACE"])
    client = sync_redis.Redis.from_url(gateway_env["REDIS_URL"])
    try:
        assert wait_until(lambda: len(_idle(client, names)) == 1, 10)
        with httpx.Client(base_url=gateway.url, headers=auth(gateway_env), timeout=20) as http:
            http.post("/v1/chat/completions", json=BODY).raise_for_status()  # warm: scripts loaded, key cached
            queue_writes = _calls(client, "psetex")
            for _ in range(5):
                answer = http.post("/v1/chat/completions", json=BODY)
                assert answer.status_code == 200, answer.text
                assert answer.json()["choices"][0]["message"]["content"]
        assert _calls(client, "psetex") == queue_writes  # no payload key written: every job went directly
        assert wait_until(lambda: len(_idle(client, names)) == 1, 5)  # registered again after each
    finally:
        client.close()


def test_a_registration_nobody_listens_on_falls_back_to_the_queue(
        gateway: GatewayHarness, gateway_env: dict[str, str]) -> None:
    """A fresh entry of a 'live' process without a subscription (its pub/sub connection lost) and one of a
    dead process are popped, the job is not handed (PUBLISH reached nobody), and it is queued as before."""
    names = Names(gateway_env["MEGABRAIN_NAMESPACE"])
    client = sync_redis.Redis.from_url(gateway_env["REDIS_URL"])
    try:
        assert wait_until(lambda: len(_idle(client, names)) == 1, 10)
        real = _idle(client, names)[0]
        client.zrem(names.idle_workers("openai"), real)  # only the ghosts are idle
        client.set(names.alive("ghost-unsubscribed"), b"1", px=10_000)
        client.zadd(names.idle_workers("openai"), {"ghost-dead": time.time() - 1,
                                                   "ghost-unsubscribed": time.time()})
        with httpx.Client(base_url=gateway.url, headers=auth(gateway_env), timeout=20) as http:
            http.post("/v1/chat/completions", json=BODY).raise_for_status()  # scripts loaded
            client.zrem(names.idle_workers("openai"), real)  # registered again meanwhile: the ghosts' turn
            client.zadd(names.idle_workers("openai"), {"ghost-dead": time.time() - 1,
                                                       "ghost-unsubscribed": time.time()})
            queue_writes = _calls(client, "psetex")
            answer = http.post("/v1/chat/completions", json=BODY)
            assert answer.status_code == 200, answer.text
        assert _calls(client, "psetex") == queue_writes + 1  # the queue took it
        idle = _idle(client, names)
        assert b"ghost-dead" not in idle and b"ghost-unsubscribed" not in idle  # both consumed
    finally:
        client.close()


def test_a_sigkilled_idle_worker_costs_no_request(patient_env: dict[str, str],
                                                  fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Its registration and liveness key outlive it for seconds: requests then fall back to the queue (or
    the other worker), and every one is answered."""
    names = Names(patient_env["MEGABRAIN_NAMESPACE"])
    client = sync_redis.Redis.from_url(patient_env["REDIS_URL"])
    try:
        with ProcessGateway(patient_env, workers=2) as gw:
            assert wait_until(lambda: len(_idle(client, names)) == 2, 15)
            os.kill(gw.workers[0].pid, signal.SIGKILL)
            gw.workers[0].wait(5)
            with httpx.Client(base_url=gw.url, headers=auth(patient_env), timeout=20) as http:
                for _ in range(4):
                    answer = http.post("/v1/chat/completions", json=BODY)
                    assert answer.status_code == 200, answer.text
            assert wait_until(lambda: len(_idle(client, names)) == 1, 5)  # the dead one's entry was consumed
    finally:
        client.close()


def test_a_handed_stream_whose_client_hangs_up_is_cancelled_at_the_worker(
        gateway: GatewayHarness, gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.token_delay = 0.2
    names = Names(gateway_env["MEGABRAIN_NAMESPACE"])
    client = sync_redis.Redis.from_url(gateway_env["REDIS_URL"])
    try:
        with httpx.Client(base_url=gateway.url, headers=auth(gateway_env), timeout=20) as http:
            http.post("/v1/chat/completions", json=BODY).raise_for_status()  # warm
            assert wait_until(lambda: len(_idle(client, names)) == 1, 5)
            queue_writes = _calls(client, "psetex")
            with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
                assert response.status_code == 200
                next(response.iter_bytes())  # the first frames, then hang up
        assert _calls(client, "psetex") == queue_writes  # it was handed, not queued
        assert wait_until(lambda: state.streams_closed_early == 1, 10)
    finally:
        client.close()


def test_a_stopping_worker_leaves_the_idle_set(gateway_env: dict[str, str],
                                               fake_openai: tuple[OpenAIFakeState, str]) -> None:
    names = Names(gateway_env["MEGABRAIN_NAMESPACE"])
    client = sync_redis.Redis.from_url(gateway_env["REDIS_URL"])
    try:
        with ProcessGateway(gateway_env) as gw:
            assert wait_until(lambda: len(_idle(client, names)) == 1, 15)
            worker_id = _idle(client, names)[0]
            gw.workers[0].send_signal(signal.SIGTERM)
            gw.workers[0].wait(15)
            assert client.zscore(names.idle_workers("openai"), worker_id) is None
    finally:
        client.close()
