"""A stream its client leaves mid-way is billed once, for what its upstream did (issue 22: the known gap that
an abandoned stream billed nothing while the operator paid its provider).

The client reads part of a stream and disconnects; the web tier stops the worker, which cancels the upstream
and settles the usage seen so far (reported, else estimated) through the one settlement script: usage,
spend and the generation record show it once, the reservation's hold and the request's place in flight are
back, and the fence says that attempt settled (so the web tier's fallback close can change nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
import redis as sync_redis

from common.names import Names
from common.usage import held_key, holds_key, inflight_key, spend_key, unbilled_key, usage_key, utc_day, utc_month
from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, create_key, env_for, wait_until

MODEL = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-sonnet-4-5"
TOKENS = 400  # the fake's answer: far more than the client reads


@pytest.fixture
def setup(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[dict[str, Any]]:
    state, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test")
    key, key_id = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "abandoned", monthly_budget=10.0, with_id=True)
    store = sync_redis.Redis.from_url(redis_url)
    with GatewayHarness.from_env(env) as harness:
        yield {"harness": harness, "state": state, "key": key, "key_id": key_id, "store": store,
               "names": Names(env["MEGABRAIN_NAMESPACE"])}
    store.close()


def usage_of(setup: dict[str, Any]) -> dict[str, int]:
    raw = setup["store"].hgetall(usage_key(setup["names"], setup["key_id"], utc_day()))
    return {k.decode().removeprefix(MODEL + "|"): int(float(v)) for k, v in raw.items() if not k.endswith(b"cost")}


def read_part_then_leave(setup: dict[str, Any], chunks: int, **body: Any) -> str:
    """Stream a chat answer, read ``chunks`` content chunks, close the connection; the request id."""
    harness: GatewayHarness = setup["harness"]
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "count for me " * 20}], "stream": True, **body}
    seen = 0
    with httpx.stream("POST", harness.url + "/v1/chat/completions", json=payload, timeout=20,
                      headers={"authorization": f"Bearer {setup['key']}"}) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
                if seen == chunks:
                    break  # the client leaves mid-stream
    return request_id


@pytest.mark.parametrize("usage_in", ["separate", "none"])
def test_an_abandoned_stream_is_billed_once_for_what_its_upstream_did(setup: dict[str, Any], usage_in: str) -> None:
    state: OpenAIFakeState = setup["state"]
    state.tokens, state.token_delay, state.usage_in = TOKENS, 0.01, usage_in
    names, key_id, store = setup["names"], setup["key_id"], setup["store"]
    request_id = read_part_then_leave(setup, 10)
    assert wait_until(lambda: usage_of(setup).get("requests") == 1, 10), "the abandoned stream was not billed"
    assert wait_until(lambda: state.streams_closed_early == 1, 10)  # the upstream was cancelled, not drained
    fence = store.get(names.fence(request_id))
    assert fence == b"s0"  # settled by its attempt: the web tier's fallback close cannot bill or release again
    usage = usage_of(setup)
    # the OpenAI fake reports usage only at the end: estimated, the output from what was streamed (4 chars a
    # token; each of its tokens is 5-6 characters), far below the whole answer's
    assert 10 <= usage["completion_tokens"] < TOKENS // 2, usage
    assert usage["prompt_tokens"] > 0
    spend = Decimal(store.get(spend_key(names, key_id, utc_month())).decode())
    assert spend > 0
    generation = httpx.get(setup["harness"].url + "/api/v1/generation", params={"id": f"chatcmpl-{request_id}"},
                           headers={"authorization": f"Bearer {setup['key']}"}, timeout=10).json()["data"]
    assert generation["finish_reason"] == "abandoned"
    assert generation["tokens_completion"] == usage["completion_tokens"]
    assert Decimal(str(generation["total_cost"])) == spend
    assert store.zcard(holds_key(names, key_id)) == 0 and store.get(held_key(names, key_id)) is None
    assert store.zcard(inflight_key(names, key_id)) == 0
    assert not store.hgetall(unbilled_key(names, utc_day()))  # nothing was also counted as unbilled work
    # and once only: a whole answer afterwards adds exactly one more request
    state.token_delay = 0.0
    answered = httpx.post(setup["harness"].url + "/v1/chat/completions", timeout=20,
                          headers={"authorization": f"Bearer {setup['key']}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert answered.status_code == 200
    assert usage_of(setup)["requests"] == 2


def test_a_stream_abandoned_before_its_first_token_bills_nothing(setup: dict[str, Any]) -> None:
    """The client gives up while the answer has not started (its status line is still held): the web tier
    closes the request at once; the upstream's answer, released only then, is refused and billed to nobody."""
    state: OpenAIFakeState = setup["state"]
    names, store, harness = setup["names"], setup["store"], setup["harness"]
    state.hold_answers = True
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client's own patience, shorter than the commit wait
            httpx.post(harness.url + "/v1/chat/completions", timeout=httpx.Timeout(20, read=0.5),
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
                       headers={"authorization": f"Bearer {setup['key']}"})
        assert wait_until(lambda: len(state.requests) == 1, 10)
        closed = lambda: any(store.get(k) == b"c" for k in store.scan_iter(match=names.fence("*")))  # noqa: E731
        assert wait_until(closed, 10), "the web tier did not close the request its client left"
    finally:
        state.hold_answers = False
    assert wait_until(lambda: store.zcard(holds_key(names, setup["key_id"])) == 0, 10)
    assert store.zcard(inflight_key(names, setup["key_id"])) == 0
    assert wait_until(lambda: state.streams_open == 0, 10)
    assert usage_of(setup).get("requests") is None



def test_an_abandoned_native_claude_stream_bills_the_prompt_its_upstream_reported(redis_url: str) -> None:
    """Claude Code's protocol, straight to Anthropic (the native pass-through): Anthropic reports the prompt's
    tokens at the stream's start, so that is what is billed for it; the output is estimated."""
    state = AnthropicFakeState(api_key="sk-ant-test", reply="word " * 400, latency=0.01, input_tokens=321)
    with ThreadedServer(create_anthropic_app(state)) as upstream:
        env = env_for(redis_url, ANTHROPIC_BASE_URL=upstream.url, ANTHROPIC_API_KEY="sk-ant-test")
        key, key_id = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "claude", monthly_budget=10.0, with_id=True)
        names = Names(env["MEGABRAIN_NAMESPACE"])
        store = sync_redis.Redis.from_url(redis_url)
        try:
            with GatewayHarness.from_env(env, pools=("anthropic",)) as harness:
                client = anthropic.Anthropic(base_url=harness.url, api_key=key, max_retries=0)
                seen = 0
                with client.messages.stream(model=CLAUDE, max_tokens=4000,
                                            messages=[{"role": "user", "content": "count"}]) as stream:
                    for text in stream.text_stream:
                        seen += 1
                        if seen == 10:
                            break  # the client leaves mid-stream
                model_usage = lambda: {k.decode(): v for k, v in store.hgetall(  # noqa: E731
                    usage_key(names, key_id, utc_day())).items()}
                assert wait_until(lambda: model_usage().get(f"{CLAUDE}|requests") == b"1", 10)
                usage = model_usage()
                assert usage[f"{CLAUDE}|prompt_tokens"] == b"321"  # as Anthropic reported it
                assert 10 <= int(usage[f"{CLAUDE}|completion_tokens"]) < 400
                assert store.zcard(holds_key(names, key_id)) == 0 and store.zcard(inflight_key(names, key_id)) == 0
        finally:
            store.close()
