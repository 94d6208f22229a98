"""One owner for a request's life: every exit ends in one finish (one log line, one metric sample), and
every request that got an inbox releases it exactly once: success, upstream error, refusal, client gone,
worker gone."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import METRICS_HEADERS, GatewayHarness, auth, env_for, wait_until

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}


class Spy:
    """Counts the relay's inbox releases per request id (the real ``close`` still runs)."""

    def __init__(self, harness: GatewayHarness) -> None:
        self.gateway = harness.server.config.app.state.gateway  # type: ignore[union-attr]
        self.closes: collections.Counter[str] = collections.Counter()
        relay = self.gateway.relay
        real_close = relay.close

        def close(request_id: str) -> None:
            self.closes[request_id] += 1
            real_close(request_id)

        relay.close = close  # type: ignore[method-assign]


@pytest.fixture
def spy(gateway: GatewayHarness) -> Spy:
    return Spy(gateway)


def finished_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[dict]:
    return [r.fields for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "megabrain.request" and r.fields.get("request_id") == request_id]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="megabrain.request")
    yield


def test_success_and_upstream_error_release_once(gateway: GatewayHarness, gateway_env: dict[str, str], spy: Spy,
                                                 fake_openai: tuple[OpenAIFakeState, str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    state, _ = fake_openai
    state.failures = [400]
    with httpx.Client(base_url=gateway.url, headers=auth(gateway_env), timeout=20) as http:
        failed = http.post("/v1/chat/completions", json=BODY)
        ok = http.post("/v1/chat/completions", json=BODY)
        streamed = http.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert failed.status_code == 400 and ok.status_code == 200 and streamed.status_code == 200
    assert streamed.text.endswith("data: [DONE]\n\n")
    for response, status in ((failed, 400), (ok, 200), (streamed, 200)):
        request_id = response.headers["x-request-id"]
        assert wait_until(lambda: len(finished_lines(caplog, request_id)) == 1, 10)
        assert spy.closes[request_id] == 1
        assert finished_lines(caplog, request_id)[0]["status"] == status
    assert not spy.gateway.relay.inboxes


def test_refusals_are_counted_and_logged(gateway: GatewayHarness, caplog: pytest.LogCaptureFixture) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        unknown_key = http.post("/v1/chat/completions", json=BODY, headers={"authorization": "Bearer sk-nope"})
        no_model = http.post("/v1/chat/completions", json={**BODY, "model": "nobody/serves-this"})
    assert unknown_key.status_code == 401 and no_model.status_code == 404
    for response in (unknown_key, no_model):
        request_id = response.headers["x-request-id"]
        assert wait_until(lambda: len(finished_lines(caplog, request_id)) == 1, 10)
        assert finished_lines(caplog, request_id)[0]["status"] == response.status_code
    metrics = httpx.get(gateway.url + "/metrics", timeout=20, headers=METRICS_HEADERS).text
    # a key is checked before the body is read, so its 401 names no model; a model id nobody serves is
    # "unknown" (a label the client cannot mint)
    assert 'megabrain_requests_total{model="none",provider="none",route="chat",status="401"}' in metrics
    assert 'megabrain_requests_total{model="unknown",provider="none",route="chat",status="404"}' in metrics
    assert "nobody/serves-this" not in metrics


def test_no_worker_503_is_counted(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                                  caplog: pytest.LogCaptureFixture) -> None:
    _, upstream = fake_openai
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, MEGABRAIN_CONFIG=_free_model_config(upstream))
    with GatewayHarness.from_env(env, pools=()) as web:  # the web tier alone: no worker serves any pool
        response = httpx.post(web.url + "/v1/chat/completions", json={**BODY, "model": "local/tiny"}, timeout=20)
        assert response.status_code == 503
        request_id = response.headers["x-request-id"]
        assert wait_until(lambda: len(finished_lines(caplog, request_id)) == 1, 10)
        assert finished_lines(caplog, request_id)[0]["status"] == 503
        assert not web.server.config.app.state.gateway.relay.inboxes  # type: ignore[union-attr]


def test_client_gone_mid_stream_releases_once(gateway: GatewayHarness, gateway_env: dict[str, str], spy: Spy,
                                              fake_openai: tuple[OpenAIFakeState, str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    state, _ = fake_openai
    state.token_delay = 0.2
    with httpx.Client(base_url=gateway.url, headers=auth(gateway_env), timeout=20) as http:
        with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            request_id = response.headers["x-request-id"]
            next(response.iter_bytes())  # the first frames, then hang up
    assert wait_until(lambda: len(finished_lines(caplog, request_id)) == 1, 10)
    assert finished_lines(caplog, request_id)[0]["status"] == 499
    assert spy.closes[request_id] == 1


def test_worker_gone_releases_once(redis_url: str, fake_openai: tuple[OpenAIFakeState, str],
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A worker that shuts down mid-job abandons it: the web tier re-runs it (nothing was sent), finds no
    worker any more, and answers 503, releasing the inbox once."""
    state, upstream = fake_openai
    state.failures = ["hang"]
    env = env_for(redis_url, OPENAI_BASE_URL=upstream, MEGABRAIN_CONFIG=_free_model_config(upstream),
                  MEGABRAIN_SHUTDOWN_GRACE="0.2")
    with GatewayHarness.from_env(env, pools=()) as web:
        spy = Spy(web)
        worker = GatewayHarness.from_env(env, pools=("local",), api=False).start()
        try:
            with httpx.Client(timeout=30) as http:
                import concurrent.futures

                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    future = pool.submit(http.post, web.url + "/v1/chat/completions",
                                         json={**BODY, "model": "local/tiny"})
                    assert wait_until(lambda: len(state.requests) >= 1, 10)
                    worker.stop()
                    response = future.result(30)
        finally:
            worker.stop()
        assert response.status_code == 503, response.text
        request_id = response.headers["x-request-id"]
        assert wait_until(lambda: len(finished_lines(caplog, request_id)) == 1, 10)
        assert spy.closes[request_id] == 1
        assert not spy.gateway.relay.inboxes


def _free_model_config(upstream: str) -> str:
    import os
    import tempfile

    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(f'[providers.local]\nkind = "openai"\nbase_url = "{upstream}"\n\n'
                '[[models]]\nid = "local/tiny"\nprovider = "local"\nupstream_id = "gpt-4o-mini"\nfree = true\n'
                'pricing = { prompt = "0", completion = "0" }\n')
    return path
