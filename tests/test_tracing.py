"""OpenTelemetry traces across the queue (README, Observability): ``megabrain web`` and ``megabrain worker`` as
real processes export to a local OTLP/HTTP receiver (tests/fakes/otlp_receiver.py), and one request is one
trace: the web span under the client's ``traceparent``, a worker span per hop under it, a span per upstream
attempt under that, whose context the upstream receives. No prompt and no key in any attribute unless the
operator opts in to content.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from common import tracing
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.otlp_receiver import ReceiverState, Span, create_receiver_app
from tests.fakes.server import ThreadedServer
from tests.harness import EXPECTED, OPEN_LIMITS, ProcessGateway, env_for, reassemble, wait_until, with_test_key

PROMPT = "Say hello to the tracing test"
MESSAGES = [{"role": "user", "content": PROMPT}]
SPAN_WAIT = 30.0  # a bound on waiting for the batch exporters of two processes (they export every 50 ms)


def _config(backup_url: str) -> str:
    return OPEN_LIMITS + f"""
[providers.backup]
kind = "openai"
base_url = "{backup_url}"

[[models]]
id = "openai/gpt-4o-mini"
free = true
fallbacks = ["backup/gpt-4o-mini"]

[[models]]
id = "backup/gpt-4o-mini"
provider = "backup"
upstream_id = "gpt-4o-mini"
free = true
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[ReceiverState]:
    state = ReceiverState()
    with ThreadedServer(create_receiver_app(state)) as server:
        state.url = server.url  # type: ignore[attr-defined]
        yield state


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[OpenAIFakeState, OpenAIFakeState]]:
    first, second = OpenAIFakeState(retry_after=0), OpenAIFakeState(retry_after=0)
    with ThreadedServer(create_openai_app(first)) as a, ThreadedServer(create_openai_app(second)) as b:
        first.base_url, second.base_url = a.url + "/v1", b.url + "/v1"  # type: ignore[attr-defined]
        yield first, second


def _gateway(redis_url: str, tmp_path: Path, receiver: ReceiverState, fakes: Any, **extra: str) -> ProcessGateway:
    config = tmp_path / "megabrain.toml"
    config.write_text(_config(fakes[1].base_url))
    env = with_test_key(env_for(redis_url, MEGABRAIN_CONFIG=str(config), OPENAI_BASE_URL=fakes[0].base_url,
                                OPENAI_API_KEY="sk-first-upstream-key", BACKUP_API_KEY="sk-backup-upstream-key",
                                MEGABRAIN_UPSTREAM_MAX_RETRIES="2", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,  # type: ignore[attr-defined]
                                OTEL_SERVICE_NAME="gateway-under-test", OTEL_BSP_SCHEDULE_DELAY="50", **extra))
    return ProcessGateway(env, worker_providers="openai,backup")


@pytest.fixture(scope="module")
def traced(redis_url: str, tmp_path_factory: pytest.TempPathFactory, receiver: ReceiverState,
           fakes: Any) -> Iterator[ProcessGateway]:
    with _gateway(redis_url, tmp_path_factory.mktemp("traced"), receiver, fakes) as gateway:
        yield gateway


def _trace(receiver: ReceiverState, trace_id: str, count: int) -> list[Span]:
    """The trace's spans, once ``count`` of them have arrived (the exporters batch)."""
    assert wait_until(lambda: len([s for s in receiver.snapshot() if s.trace_id == trace_id]) >= count, SPAN_WAIT), \
        [(s.name, s.kind) for s in receiver.snapshot() if s.trace_id == trace_id]
    return [s for s in receiver.snapshot() if s.trace_id == trace_id]


def _no_secret_or_prompt(spans: list[Span], secrets_: list[str], prompt: bool = True) -> None:
    for span in spans:
        text = repr(span.attributes) + repr(span.events) + repr(span.resource)
        for secret in secrets_:
            assert secret not in text, f"a key in span {span.name}"
        if prompt:
            assert PROMPT not in text and "tok0" not in text, f"content in span {span.name}"


def test_a_streamed_request_that_falls_back_is_one_trace_under_the_clients(
        traced: ProcessGateway, receiver: ReceiverState, fakes: Any) -> None:
    first, second = fakes
    first.failures, first.requests[:], second.requests[:] = [503, 503, 503], [], []
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    key = traced.env["MEGABRAIN_TEST_API_KEY"]
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=key, max_retries=0, timeout=20,
                           default_headers={"traceparent": f"00-{trace_id}-{client_span}-01"})
    stream = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    assert reassemble(stream)["text"] == EXPECTED

    spans = _trace(receiver, trace_id, 1 + 2 + 4)  # the request, a worker span per hop, four upstream attempts
    by_kind: dict[str, list[Span]] = {}
    for span in spans:
        by_kind.setdefault(span.kind, []).append(span)
    (web,) = by_kind["server"]
    assert web.parent_id == client_span  # the client's traceparent is the parent
    assert web.name == "chat openai/gpt-4o-mini"
    assert web.resource["service.name"] == "gateway-under-test" and web.resource["megabrain.role"] == "web"
    assert web.attributes["gen_ai.operation.name"] == "chat"
    assert web.attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"
    assert web.attributes["gen_ai.response.model"] == "backup/gpt-4o-mini"
    assert web.attributes["gen_ai.provider.name"] == "backup"
    assert web.attributes["megabrain.plan"] == ["openai:openai/gpt-4o-mini", "backup:backup/gpt-4o-mini"]
    assert web.attributes["http.response.status_code"] == 200
    assert web.attributes["gen_ai.usage.output_tokens"] == 16 and web.attributes["gen_ai.usage.input_tokens"] > 0
    assert "megabrain.queue_ms" in web.attributes and "megabrain.time_to_first_token_ms" in web.attributes
    events = [name for name, _ in web.events]
    assert events[:2] == ["enqueued", "picked_up"] and "handoff" in events and "first_byte" in events

    workers = sorted(by_kind["consumer"], key=lambda s: s.attributes["megabrain.hop"])
    assert [w.parent_id for w in workers] == [web.span_id, web.span_id]  # across the queue, both hops
    assert [w.attributes["gen_ai.provider.name"] for w in workers] == ["openai", "backup"]
    assert all(w.resource["megabrain.role"] == "worker" for w in workers)
    assert [name for name, _ in workers[0].events] == ["handoff"]

    attempts = sorted(by_kind["client"], key=lambda s: s.start_ns)
    assert [a.parent_id for a in attempts] == [workers[0].span_id] * 3 + [workers[1].span_id]
    assert [a.attributes["http.response.status_code"] for a in attempts] == [503, 503, 503, 200]
    assert [a.attributes["megabrain.retry"] for a in attempts] == [0, 1, 2, 0]
    assert [a.error for a in attempts] == [True, True, True, False]
    served = attempts[-1]
    assert served.attributes["gen_ai.response.model"] == "backup/gpt-4o-mini"
    assert served.attributes["gen_ai.usage.output_tokens"] == 16
    assert served.attributes["gen_ai.response.finish_reasons"] == ["stop"]

    # each upstream call carried its own attempt's context onward
    sent = [r["headers"].get("traceparent") for r in first.requests + second.requests]
    assert sent == [f"00-{trace_id}-{a.span_id}-01" for a in attempts]
    _no_secret_or_prompt(spans, [key, "sk-first-upstream-key", "sk-backup-upstream-key"])


def test_a_request_without_traceparent_starts_its_own_trace(traced: ProcessGateway, receiver: ReceiverState,
                                                            fakes: Any) -> None:
    fakes[0].failures = []
    client = openai.OpenAI(base_url=traced.url + "/v1", api_key=traced.env["MEGABRAIN_TEST_API_KEY"],
                           max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    request_id = raw.headers["x-request-id"]
    assert wait_until(lambda: any(s.attributes.get("megabrain.request_id") == request_id and s.kind == "server"
                                  for s in receiver.snapshot()), SPAN_WAIT)
    (web,) = [s for s in receiver.snapshot() if s.attributes.get("megabrain.request_id") == request_id
              and s.kind == "server"]
    assert web.parent_id == ""  # a root
    spans = _trace(receiver, web.trace_id, 3)
    assert sorted(s.kind for s in spans) == ["client", "consumer", "server"]
    assert receiver.refused == []  # every export was a well-formed OTLP/HTTP protobuf request


def test_content_is_recorded_only_when_the_operator_opts_in(redis_url: str, tmp_path: Path,
                                                            receiver: ReceiverState, fakes: Any) -> None:
    fakes[0].failures = []
    with _gateway(redis_url, tmp_path, receiver, fakes, MEGABRAIN_TRACE_CONTENT="on") as gateway:
        trace_id = secrets.token_hex(16)
        key = gateway.env["MEGABRAIN_TEST_API_KEY"]
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20,
                               default_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
        spans = _trace(receiver, trace_id, 3)
    (worker,) = [s for s in spans if s.kind == "consumer"]
    assert PROMPT in worker.attributes["gen_ai.input.messages"]
    (attempt,) = [s for s in spans if s.kind == "client"]
    assert "tok0" in attempt.attributes["gen_ai.output.messages"]
    _no_secret_or_prompt(spans, [key, "sk-first-upstream-key"], prompt=False)


@pytest.mark.parametrize("env", [
    {},
    {"OTEL_SERVICE_NAME": "x"},  # a service name alone names no endpoint
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
])
def test_without_an_endpoint_tracing_stays_off(env: dict[str, str]) -> None:
    assert not tracing.configured(env)
    assert not tracing.init_tracing(env, "web") and not tracing.enabled()
    assert tracing.start_request({"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}, "chat", "r1") is None
    assert tracing.outgoing() is None  # the upstream call gets no traceparent header


@pytest.mark.parametrize("env", [{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
                                 {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}])
def test_an_endpoint_turns_tracing_on(env: dict[str, str]) -> None:
    assert tracing.configured(env)
