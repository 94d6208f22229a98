"""Resilience with real processes: SIGTERM/SIGKILL of workers and the web process, Redis outage, backpressure.

``megabrain web`` and ``megabrain worker`` run as separate processes (tests/harness.py ProcessGateway), so
they share the suite's real Redis (``REDIS_URL`` or the session's embedded server). The Redis-outage test
starts its own server (tests/harness.py RedisServer) on a free port so it can stop and restart it.
Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import (EXPECTED, METRICS_HEADERS, GatewayHarness, ProcessGateway, RedisServer, auth, create_key,
                           env_for, live_workers, reassemble, sse_data, tokens_text, wait_until)

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}


@pytest.fixture
def slow_env(gateway_env: dict[str, str]) -> dict[str, str]:
    return {**gateway_env, "MEGABRAIN_HEARTBEAT_TIMEOUT": "3", "MEGABRAIN_SHUTDOWN_GRACE": "8"}


def test_sigterm_worker_mid_stream_finishes_the_stream(slow_env: dict[str, str],
                                                       fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.token_delay = 0.1
    with ProcessGateway(slow_env, workers=1) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(slow_env), timeout=20,
                          json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            events = sse_data(response)
            payloads = [next(events)]
            gw.workers[0].send_signal(signal.SIGTERM)
            payloads += list(events)
        assert payloads[-1] == "[DONE]"
        assert reassemble(payloads)["text"] == EXPECTED  # every token once, in order
        assert gw.workers[0].wait(10) == 0


def test_sigterm_web_mid_stream_finishes_then_exits(slow_env: dict[str, str],
                                                    fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.token_delay = 0.1
    with ProcessGateway(slow_env, workers=1) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        assert gw.web is not None
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(slow_env), timeout=20,
                          json={**BODY, "stream": True}) as response:
            events = sse_data(response)
            payloads = [next(events)]
            gw.web.send_signal(signal.SIGTERM)
            payloads += list(events)
        assert payloads[-1] == "[DONE]"
        assert reassemble(payloads)["text"] == EXPECTED
        assert gw.web.wait(10) is not None
        with pytest.raises(httpx.ConnectError):  # it stopped accepting
            httpx.get(gw.url + "/health", timeout=2)


def test_sigkill_worker_non_streaming_is_answered_by_another(patient_env: dict[str, str],
                                                             fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = ["hang"]  # the first worker's upstream call never answers; it is killed meanwhile
    with ProcessGateway(patient_env, workers=1) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        first = gw.workers[0]
        with httpx.Client(timeout=40) as client:  # far below the 60 s heartbeat timeout
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                future = pool.submit(client.post, gw.url + "/v1/chat/completions", headers=auth(patient_env),
                                     json=BODY)
                assert wait_until(lambda: len(state.requests) >= 1, 10)
                gw.start_worker()
                assert wait_until(lambda: live_workers(gw.url) == 2, 15)
                first.kill()
                response = future.result(30)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == EXPECTED
        assert len(state.requests) == 2  # the dead worker's call, then the other worker's
        # the surviving worker's metrics reach the web tier's /metrics through Redis (pushed every 5 s)
        assert wait_until(lambda: 'megabrain_upstream_duration_seconds_count{outcome="ok",provider="openai"} 1.0'
                          in httpx.get(gw.url + "/metrics", timeout=5, headers=METRICS_HEADERS).text, 30, 0.5)  # generous: a loaded CI machine


def test_sigkill_worker_mid_stream_ends_with_an_error(patient_env: dict[str, str],
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.token_delay = 0.3
    with ProcessGateway(patient_env, workers=1) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        # the read timeout bounds the wait: the gateway must end the stream itself, long before the
        # heartbeat timeout (60 s), by the dead worker's liveness key
        with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(patient_env), timeout=30,
                          json={**BODY, "stream": True}) as response:
            events = sse_data(response)
            payloads = [next(events), next(events)]
            gw.workers[0].kill()
            payloads += list(events)
        last = json.loads(payloads[-1])
        assert last["error"]["type"] == "temporarily_unavailable"
        assert "[DONE]" not in payloads
        text = reassemble(payloads[:-1])["text"]
        assert EXPECTED.startswith(text) and text  # what came was a clean prefix, nothing duplicated


def test_what_outlives_the_shutdown_grace(patient_env: dict[str, str],
                                         fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """README ("Shutdown, restarts and failures"), with a 1 s MEGABRAIN_SHUTDOWN_GRACE:

    1. a worker given SIGTERM lets its jobs run for the grace, then tells the web tier which requests it
       abandons: the one that sent nothing yet is re-run at once on the other worker (here one in this
       process; the 60 s heartbeat timeout is far beyond the client's read timeout: only the worker's word
       can make that re-run in time), and a stream that sent tokens ends with the in-band error frame, never
       restarted;
    2. the web process given SIGTERM lets a running stream go on for the grace, then cuts it: the stream ends
       without ``[DONE]`` (the client sees it truncated), and the process exits.
    """
    state, _ = fake_openai
    state.failures = ["hang"]  # the first call never answers: a request that has sent nothing
    state.tokens, state.token_delay = 200, 0.5  # streams last 100 s: far beyond the grace and a worker's start
    answer_text = tokens_text(200)
    env = {**patient_env, "MEGABRAIN_SHUTDOWN_GRACE": "1"}
    other = GatewayHarness.from_env(env, api=False)  # the other worker, started once both requests are at the first
    try:
        with ProcessGateway(env, workers=1) as gw, concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = gw.workers[0]
            silent = pool.submit(httpx.post, gw.url + "/v1/chat/completions", headers=auth(env), json=BODY, timeout=40)
            assert wait_until(lambda: len(state.requests) == 1, 10)
            with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(env), timeout=30,
                              json={**BODY, "stream": True}) as response:
                events = sse_data(response)
                payloads = [next(events)]  # tokens went out: this one can no longer be re-run
                other.start()
                assert wait_until(lambda: live_workers(gw.url) == 2, 15)
                first.send_signal(signal.SIGTERM)
                payloads += list(events)
            answer = silent.result(45)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == answer_text  # re-run on the other worker
            last = json.loads(payloads[-1])
            assert last["error"]["type"] == "temporarily_unavailable", payloads[-1]
            text = reassemble(payloads[:-1])["text"]
            assert "[DONE]" not in payloads and text and answer_text.startswith(text) and text != answer_text
            assert len(state.requests) == 3  # the abandoned call, the stream, the re-run: the stream never twice
            assert first.wait(15) == 0

            assert gw.web is not None
            cut: list[str] = []
            with pytest.raises(httpx.RemoteProtocolError):  # the chunked body never got its end
                with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(env), timeout=30,
                                  json={**BODY, "stream": True}) as response:
                    assert response.status_code == 200
                    for payload in sse_data(response):
                        cut.append(payload)
                        if len(cut) == 1:
                            gw.web.send_signal(signal.SIGTERM)
            assert gw.web.wait(15) is not None
            text = reassemble(cut)["text"]
            assert "[DONE]" not in cut and text and answer_text.startswith(text) and text != answer_text
    finally:
        if other.thread.is_alive():
            other.stop()


# --------------------------------------------------------------------------- Redis outage


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_redis_outage_gives_fast_503_then_recovers(own_redis: RedisServer,
                                                   fake_openai: tuple[OpenAIFakeState, str]) -> None:
    _, upstream = fake_openai
    # a fast safety-net poll, so the workers' poll loops certainly meet the dead Redis during the outage
    env = env_for(own_redis.url, OPENAI_BASE_URL=upstream, OPENAI_API_KEY="sk-upstream-test",
                  MEGABRAIN_POLL_DELAY="0.3")
    key = create_key(own_redis.url, env["MEGABRAIN_NAMESPACE"])
    with ProcessGateway(env, workers=1) as gw:
        client = openai.OpenAI(api_key=key, max_retries=0, timeout=10, base_url=gw.url + "/v1")
        assert wait_until(lambda: live_workers(gw.url) == 1, 15)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
        own_redis.stop()
        # a short client timeout: the refusal must not wait for anything
        response = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=BODY, timeout=5)
        assert response.status_code == 503, response.text
        assert response.json()["error_type"] == "temporarily_unavailable"
        assert httpx.get(gw.url + "/ready", timeout=5).status_code == 503
        time.sleep(1.5)  # an outage of several poll rounds, liveness writes and relay reconnect attempts
        own_redis.start()  # same port, empty data: the gateway must find its way back by itself
        key = create_key(own_redis.url, env["MEGABRAIN_NAMESPACE"])  # the old one was lost
        client = client.with_options(api_key=key)

        def serves() -> bool:
            try:
                return client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES).choices[0].message.content == EXPECTED
            except openai.APIError:
                return False

        if not wait_until(serves, 20, 0.5):
            for proc in gw.workers:
                proc.terminate()
            pytest.fail("no recovery after Redis came back: " + httpx.get(gw.url + "/ready", timeout=5).text
                        + "\nworker log:\n" + "".join(gw.log(p) for p in gw.workers))
        assert httpx.get(gw.url + "/ready", timeout=5).status_code == 200


# --------------------------------------------------------------------------- backpressure


def test_queue_over_depth_limit_gets_503_quickly(gateway_env: dict[str, str],
                                                 fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A busy pool whose queue holds ``queue_depth_limit`` jobs refuses the next one at once."""
    state, _ = fake_openai
    state.latency = 3.0
    env = {**gateway_env, "MEGABRAIN_QUEUE_DEPTH_LIMIT": "1", "MEGABRAIN_WORKER_MAX_JOBS": "1"}
    with GatewayHarness.from_env(env) as gw:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.post, gw.url + "/v1/chat/completions", headers=auth(env), json=BODY, timeout=20)
            assert wait_until(lambda: len(state.requests) >= 1, 10)
            refused = httpx.post(gw.url + "/v1/chat/completions", headers=auth(env), json=BODY, timeout=20)
            refused_while_busy = not slow.done()  # answered at once, not after the slow one freed the worker
            assert slow.result(20).status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error_type"] == "temporarily_unavailable"
    assert refused.headers["retry-after"]
    assert refused_while_busy
