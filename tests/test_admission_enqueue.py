"""A chat request's limits and its enqueue run as one script (api/exchange/exchange.py ``_admit_and_write``): what
the limits refuse is never queued, what they admit is queued and counted once, a full queue still counts."""

from __future__ import annotations

import httpx
import redis as sync_redis

from common.names import Names
from tests.harness import GatewayHarness, env_for

BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _queued(redis_url: str, names: Names) -> int:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(names.queue("openai")))
    finally:
        client.close()


def test_a_request_its_limits_refuse_is_never_queued(redis_url: str, fake_openai) -> None:
    state, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_FREE_MODELS="openai/gpt-4o-mini", MEGABRAIN_FREE_RPM="2")
    with GatewayHarness.from_env(env) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as http:
        answers = [http.post("/v1/chat/completions", json=BODY) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["1", "0", "0"]
        assert answers[2].json()["error_type"] == "rate_limit_exceeded"
        assert len(state.requests) == 2  # the refused one never reached a worker
        assert _queued(redis_url, Names(env["MEGABRAIN_NAMESPACE"])) == 0


def test_a_full_queue_refuses_after_counting_the_request(redis_url: str, fake_openai) -> None:
    state, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_FREE_MODELS="openai/gpt-4o-mini", MEGABRAIN_FREE_RPM="5",
                  MEGABRAIN_QUEUE_DEPTH_LIMIT="0")
    names = Names(env["MEGABRAIN_NAMESPACE"])
    with GatewayHarness.from_env(env) as gateway, httpx.Client(base_url=gateway.url, timeout=20) as http:
        first, second = (http.post("/v1/chat/completions", json=BODY) for _ in range(2))
        assert first.status_code == second.status_code == 503
        assert "its queue is full" in first.json()["error"]["message"]
        assert state.requests == [] and _queued(redis_url, names) == 0
        client = sync_redis.Redis.from_url(redis_url)
        try:
            counts = [int(client.hget(k, "n")) for k in client.scan_iter(match=names.key("rl:ipm:*"))]
        finally:
            client.close()
        assert counts == [2]  # both were admitted (and counted) before the depth check
