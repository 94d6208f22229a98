"""Operations: /metrics (parsed by prometheus-client), /ready, Sentry events (scrubbed), JSON keep-alive."""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.exchange import answer
from api.access.keys import KeyStore
from common import metrics, telemetry
from common.settings import load_settings
from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import ThreadedServer
from tests.harness import EXPECTED, GatewayHarness, auth, metric_value as value, scrape, wait_until

PROMPT = "zebra-marmalade-4417 is my secret prompt"
UPSTREAM_KEY = "sk-upstream-test"  # tests/conftest.py gateway_env


def test_metrics_count_requests_and_pool_gauges(gateway: GatewayHarness, client: openai.OpenAI) -> None:
    before = scrape(gateway.url)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                        stream=True))
    labels = {"route": "chat", "model": "openai/gpt-4o-mini", "provider": "openai", "status": "200"}
    # a stream is counted when its body generator ends, just after the client read [DONE]
    def counted() -> float:
        return value(scrape(gateway.url), "megabrain_requests", "megabrain_requests_total", **labels) \
            - value(before, "megabrain_requests", "megabrain_requests_total", **labels)

    assert wait_until(lambda: counted() >= 2, 10, 0.05)
    after = scrape(gateway.url)
    assert value(after, "megabrain_requests", "megabrain_requests_total", **labels) \
        - value(before, "megabrain_requests", "megabrain_requests_total", **labels) == 2
    ttft = ("megabrain_time_to_first_token_seconds", "megabrain_time_to_first_token_seconds_count")
    assert value(after, *ttft, route="chat", provider="openai") - value(before, *ttft, route="chat",
                                                                          provider="openai") == 2
    assert value(after, "megabrain_live_workers", "megabrain_live_workers", pool="openai") == 1
    assert value(after, "megabrain_queue_depth", "megabrain_queue_depth", pool="openai") == 0
    assert ("megabrain_queue_oldest_job_age_seconds", (("pool", "openai"),)) in \
        after["megabrain_queue_oldest_job_age_seconds"]


def test_metrics_count_upstream_errors_and_retries(gateway: GatewayHarness, client: openai.OpenAI,
                                                   fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [500, 500]
    before = scrape(gateway.url)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.content == EXPECTED
    after = scrape(gateway.url)
    errors = ("megabrain_upstream_errors", "megabrain_upstream_errors_total")
    labels = {"provider": "openai", "model": "openai/gpt-4o-mini", "status": "500"}
    assert value(after, *errors, **labels) - value(before, *errors, **labels) == 2
    retries = ("megabrain_upstream_retries", "megabrain_upstream_retries_total")
    assert value(after, *retries, provider="openai") - value(before, *retries, provider="openai") == 2


def test_snapshots_of_other_processes_are_summed() -> None:
    """What a web process does with worker snapshots read from Redis: sum counters, drop stale ones."""
    mine = {("megabrain_upstream_retries", "counter", "doc"): {
        ("megabrain_upstream_retries_total", (("provider", "openai"),)): 2.0}}
    raw = metrics.encode_snapshot(mine)
    other = metrics.decode_snapshot(raw, now=0)
    assert other is not None
    stale = metrics.decode_snapshot(raw, now=10**10)
    assert stale is None
    text = metrics.exposition([mine, other]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["megabrain_upstream_retries"].samples[0].value == 4.0
    assert metrics.decode_snapshot(b"\x80not json", now=0) is None


def test_ready_reports_redis_and_pools(gateway: GatewayHarness) -> None:
    response = httpx.get(gateway.url + "/v1/ready", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["redis"] is True and body["relay"] is True
    assert body["pools_with_workers"] == ["openai"]
    assert body["pools"]["openai"]["live_workers"] == 1
    assert httpx.get(gateway.url + "/health", timeout=5).json() == {"status": "ok"}


def test_ready_without_workers_lists_no_pool(gateway_env: dict[str, str]) -> None:
    with GatewayHarness.from_env(gateway_env, pools=()) as harness:
        body = httpx.get(harness.url + "/ready", timeout=5).json()
    assert body["pools_with_workers"] == []
    assert body["pools"]["openai"]["live_workers"] == 0


# --------------------------------------------------------------------------- Sentry


class SentrySink:
    """A local Sentry: accepts envelopes on POST /api/<project>/envelope/ and keeps their raw text."""

    def __init__(self) -> None:
        self.envelopes: list[str] = []
        self.arrived = threading.Condition()
        self.server = ThreadedServer(Starlette(routes=[Route("/api/{project}/envelope/", self.envelope,
                                                             methods=["POST"])]))

    async def envelope(self, request: Request) -> JSONResponse:
        raw = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        with self.arrived:
            self.envelopes.append(raw.decode())
            self.arrived.notify_all()
        return JSONResponse({"id": "0" * 32})

    def events(self) -> list[dict[str, Any]]:
        """Every event item (error events; transactions excluded) of every envelope."""
        events = []
        for envelope in self.envelopes:
            lines = envelope.split("\n")
            for header, payload in zip(lines[1::2], lines[2::2]):
                if json.loads(header).get("type") == "event":
                    events.append(json.loads(payload))
        return events

    def wait_for(self, predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: predicate(self.events()), timeout)
        return self.events()


@pytest.fixture
def sentry() -> Iterator[SentrySink]:
    sink = SentrySink()
    with sink.server:
        yield sink
        telemetry.shutdown_sentry()


def gateway_key_store(gateway: GatewayHarness) -> KeyStore:
    state = gateway.server.config.app.state  # type: ignore[union-attr]
    return KeyStore(state.gateway.redis, state.gateway.names)


def test_sentry_gets_upstream_failure_without_secrets(
    sentry: SentrySink, gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]
) -> None:
    env = {**gateway_env, "SENTRY_DSN": f"http://publickey@127.0.0.1:{sentry.server.port}/42"}
    settings = load_settings(env=env, config_path=env["MEGABRAIN_CONFIG"])
    assert telemetry.init_sentry(settings, "serve")
    state, _ = fake_openai
    state.failures = [503, 503, 503]
    with GatewayHarness(settings) as gateway:
        _, client_key = gateway.run(gateway_key_store(gateway).create("ops"))
        response = httpx.post(
            gateway.url + "/v1/chat/completions", timeout=20,
            headers={"authorization": f"Bearer {client_key}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]},
        )
        assert response.status_code == 503
        # an unhandled error logged anywhere (here: by hand) also goes out, scrubbed
        logging.getLogger("megabrain.test").error(
            "boom with %s and Bearer %s (%s)", UPSTREAM_KEY + "-extra", client_key, "https://x/y?key=AIzaSyA0123456789abcdefghijk")
        events = sentry.wait_for(lambda evs: len(evs) >= 2)
    failures = [e for e in events if e.get("tags", {}).get("provider") == "openai"]
    assert failures, events
    tags = failures[0]["tags"]
    assert tags["model"] == "openai/gpt-4o-mini" and tags["pool"] == "openai" and tags["request_id"]
    assert tags["upstream_status"] == "503"
    assert any("boom" in json.dumps(e) for e in events)
    everything = "\n".join(sentry.envelopes)
    for secret in (PROMPT, "zebra-marmalade", client_key, UPSTREAM_KEY, "AIzaSyA0123456789"):
        assert secret not in everything


def test_scrub_drops_request_data_and_local_variables() -> None:
    telemetry._secret_values = ["provider-key-value-123"]
    try:
        event = {
            "request": {"url": "http://gw/v1/chat/completions?key=abc", "method": "POST",
                        "headers": {"Authorization": "Bearer mb-abcdef123456"}, "data": {"messages": [PROMPT]}},
            "exception": {"values": [{"value": "failed with provider-key-value-123",
                                      "stacktrace": {"frames": [{"function": "f", "vars": {"body": PROMPT}}]}}]},
            "breadcrumbs": {"values": [{"message": "GET https://up/v1?key=AIzaSyA0123456789abcdefghijk",
                                        "data": {"url": "https://up/v1?key=zzz"}}]},
            "extra": {"prompt": PROMPT},
            "contexts": {"custom": {"messages": [PROMPT], "note": "sk-abcdefghijkl"}},
        }
        text = json.dumps(telemetry.scrub(event))
    finally:
        telemetry._secret_values = []
    for secret in (PROMPT, "mb-abcdef123456", "provider-key-value-123", "AIzaSyA0", "sk-abcdefghijkl", "key=abc"):
        assert secret not in text
    assert "http://gw/v1/chat/completions" in text


# --------------------------------------------------------------------------- Heroku keep-alive for JSON


@pytest.fixture
def quick_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer, "JSON_KEEPALIVE_AFTER", 0.3)
    monkeypatch.setattr(answer, "JSON_KEEPALIVE_EVERY", 0.2)


def test_slow_json_answer_is_padded_with_whitespace(quick_keepalive: None, gateway: GatewayHarness,
                                                     client: openai.OpenAI,
                                                     fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.latency = 1.2
    raw = httpx.post(gateway.url + "/v1/chat/completions", timeout=20, headers=auth(client.api_key),
                     json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert raw.status_code == 200
    assert raw.content.startswith(b"  ")  # the first space at 0.3 s, more every 0.2 s
    assert json.loads(raw.content)["choices"][0]["message"]["content"] == EXPECTED
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == EXPECTED


def test_error_after_padding_is_the_error_envelope(quick_keepalive: None, gateway: GatewayHarness,
                                                   client: openai.OpenAI,
                                                   fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = ["hang", "hang", "hang"]  # each attempt fails after 0.5 s: the error comes after padding
    state.hang_seconds = 0.5
    raw = httpx.post(gateway.url + "/v1/chat/completions", timeout=20, headers=auth(client.api_key),
                     json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert raw.status_code == 200  # committed before the failure was known
    assert raw.content.startswith(b" ")
    body = json.loads(raw.content)
    assert body["error_type"] == "temporarily_unavailable" and body["error"]["type"] == "temporarily_unavailable"
    # what the OpenAI SDK makes of it: no exception, no choices, the error object on `.error`
    state.failures = ["hang", "hang", "hang"]
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices is None
    assert completion.error["type"] == "temporarily_unavailable"  # type: ignore[attr-defined]


def test_status_command_reads_a_running_server(gateway: GatewayHarness, capsys: pytest.CaptureFixture[str]) -> None:
    from api.cli.main import main

    main(["status", "--url", gateway.url])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "redis: ok"
    assert lines[2].split() == ["openai", "1", "0", "-"]
