"""Retries and cross-provider fallback, proven by counting the requests each fake upstream received.

Two OpenAI-compatible fakes serve the same model: ``openai`` (first choice) and ``backup`` (a provider from
the config file, also the configured fallback). Each pool only calls its own provider, so a request the
backup answers was handed from the first pool's queue to the second's.

The upstream read timeout is short only in the tests whose subject is a hang (``read_timeout`` parametrized):
elsewhere a stall of a loaded machine must not count as a timeout and add a retry to the exact counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from api.gateway import Gateway
from router.plan import plan_for
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import (EXPECTED, OPEN_LIMITS, GatewayHarness, env_for, metric_value, reassemble, scrape,
                           wait_until)

MESSAGES = [{"role": "user", "content": "Say hello"}]
HANG_TIMEOUT = 0.5  # seconds of upstream silence that count as a timeout, in the tests of hangs

Fakes = tuple[OpenAIFakeState, OpenAIFakeState]


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
id = "openai/gpt-4o"
free = true

[[models]]
id = "backup/gpt-4o-mini"
provider = "backup"
upstream_id = "gpt-4o-mini"
free = true
"""


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    first, second = OpenAIFakeState(retry_after=0), OpenAIFakeState(retry_after=0)
    with ThreadedServer(create_openai_app(first)) as a, ThreadedServer(create_openai_app(second)) as b:
        first.base_url, second.base_url = a.url + "/v1", b.url + "/v1"  # type: ignore[attr-defined]
        yield first, second


@pytest.fixture
def read_timeout() -> float:
    """The upstream read timeout: the default's order (a stall is no timeout); parametrized by the hang tests."""
    return 120.0


@pytest.fixture
def first_byte_timeout() -> float:
    """A stream's first-byte timeout: the default's order; parametrized by the tests of silent streams."""
    return 30.0


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, fakes: Fakes, read_timeout: float,
            first_byte_timeout: float) -> Iterator[GatewayHarness]:
    first, second = fakes
    config = tmp_path / "megabrain.toml"
    config.write_text(_config(second.base_url))  # type: ignore[attr-defined]
    env = env_for(redis_url, MEGABRAIN_CONFIG=str(config), OPENAI_BASE_URL=first.base_url,  # type: ignore[attr-defined]
                  OPENAI_API_KEY="sk-first", MEGABRAIN_UPSTREAM_MAX_RETRIES="2",
                  MEGABRAIN_UPSTREAM_READ_TIMEOUT=str(read_timeout),
                  MEGABRAIN_UPSTREAM_FIRST_BYTE_TIMEOUT=str(first_byte_timeout))
    with GatewayHarness.from_env(env, pools=("openai", "backup")) as harness:
        yield harness


@pytest.fixture
def client(gateway: GatewayHarness) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=20,
                         default_headers={"Authorization": ""})


def _counts(fakes: Fakes) -> tuple[int, int]:
    return len(fakes[0].requests), len(fakes[1].requests)


def _stream_text(client: openai.OpenAI, **kwargs: object) -> str:
    stream = client.chat.completions.create(messages=MESSAGES, stream=True, **kwargs)  # type: ignore[call-overload]
    return reassemble(stream)["text"]


def test_the_plan_lists_the_backup(gateway: GatewayHarness) -> None:
    catalog = _gateway(gateway).catalog
    assert [r.provider for r in plan_for(catalog, "openai/gpt-4o-mini")] == ["openai", "backup"]


@pytest.mark.parametrize("stream", [False, True])
def test_503_beyond_retries_is_answered_by_the_backup(client: openai.OpenAI, gateway: GatewayHarness, fakes: Fakes,
                                                      stream: bool) -> None:
    fallbacks = ("megabrain_fallbacks", "megabrain_fallbacks_total")
    before = metric_value(scrape(gateway.url), *fallbacks, from_provider="openai", to_provider="backup")
    fakes[0].failures = [503, 503, 503]
    if stream:
        assert _stream_text(client, model="openai/gpt-4o-mini") == EXPECTED
    else:
        raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
        completion = raw.parse()
        assert completion.choices[0].message.content == EXPECTED
        assert raw.headers["x-megabrain-provider"] == "backup"
        assert completion.model == "backup/gpt-4o-mini"
        assert completion.model_extra["provider"] == "backup"
    assert _counts(fakes) == (3, 1)  # the first try and two retries, then the backup's pool
    assert fakes[1].requests[0]["body"]["model"] == "gpt-4o-mini"
    assert metric_value(scrape(gateway.url), *fallbacks, from_provider="openai", to_provider="backup") == before + 1


def test_a_single_503_is_retried_in_place(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = [503]
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-megabrain-provider"] == "openai"
    assert _counts(fakes) == (2, 0)


def test_429_retry_after_is_honoured_at_the_same_provider(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = [429]
    fakes[0].retry_after = 0.6
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-megabrain-provider"] == "openai"
    assert _counts(fakes) == (2, 0)
    first, retry = fakes[0].requests
    # the upstream saw the retry as late as it asked (a lower bound, which load cannot break; backoff alone
    # would have retried within 0.25 s)
    assert retry["at"] - first["at"] >= 0.6


def test_429_asking_for_a_long_wait_moves_to_the_backup(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = [429]
    fakes[0].retry_after = 120
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-megabrain-provider"] == "backup"
    assert _counts(fakes) == (1, 1)


@pytest.mark.parametrize("read_timeout", [HANG_TIMEOUT])
def test_a_silent_upstream_goes_to_the_next_provider(client: openai.OpenAI, fakes: Fakes) -> None:
    """A timeout is not retried at the same provider (that would cost the whole wait again): the backup
    answers after one read timeout."""
    fakes[0].failures = ["hang"]
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-megabrain-provider"] == "backup"
    assert raw.parse().choices[0].message.content == EXPECTED
    assert _counts(fakes) == (1, 1)


@pytest.mark.parametrize("first_byte_timeout", [HANG_TIMEOUT])
def test_a_silent_stream_goes_to_the_next_provider_at_the_first_byte_timeout(client: openai.OpenAI,
                                                                            fakes: Fakes) -> None:
    """The read timeout stays 120 s (and the fake hangs 60 s): only the stream's first-byte timeout can move
    it to the backup before the client's 20 s read timeout."""
    fakes[0].failures = ["hang"]
    assert _stream_text(client, model="openai/gpt-4o-mini") == EXPECTED
    assert _counts(fakes) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_a_malformed_answer_goes_to_the_next_provider(client: openai.OpenAI, fakes: Fakes, stream: bool) -> None:
    """A 200 that is no answer (an HTML page) is not asked for again at the same provider."""
    fakes[0].failures = ["malformed"]
    if stream:
        assert _stream_text(client, model="openai/gpt-4o-mini") == EXPECTED
    else:
        raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
        assert raw.headers["x-megabrain-provider"] == "backup"
    assert _counts(fakes) == (1, 1)


def test_a_connection_reset_is_retried(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = ["reset"]
    completion = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == EXPECTED
    assert _counts(fakes) == (2, 0)


@pytest.mark.parametrize("failure", ["midstream_error", "cut"])
def test_failure_after_tokens_is_neither_restarted_nor_handed_on(client: openai.OpenAI, fakes: Fakes,
                                                                 failure: str) -> None:
    fakes[0].failures = [failure]
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True):
            received += "".join(c.delta.content or "" for c in chunk.choices)
    assert received.startswith("tok0 ") and received != EXPECTED
    assert _counts(fakes) == (1, 0)


def test_a_400_is_neither_retried_nor_handed_on(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = [400]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert _counts(fakes) == (1, 0)


def test_the_clients_models_list_is_a_fallback(client: openai.OpenAI, fakes: Fakes) -> None:
    fakes[0].failures = [503, 503, 503]
    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o", messages=MESSAGES, extra_body={"models": ["backup/gpt-4o-mini"]})
    completion = raw.parse()
    assert raw.headers["x-megabrain-provider"] == "backup" and completion.model == "backup/gpt-4o-mini"
    assert _counts(fakes) == (3, 1)
    assert [r["body"]["model"] for r in fakes[0].requests] == ["gpt-4o"] * 3
    assert "models" not in fakes[1].requests[0]["body"]  # the gateway's own field is not sent upstream


def test_everyone_down_is_a_503(gateway: GatewayHarness, fakes: Fakes) -> None:
    fakes[0].failures = [503] * 3
    fakes[1].failures = [503] * 3
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "openai/gpt-4o-mini",
                                                                       "messages": MESSAGES}, timeout=20)
    assert response.status_code == 503 and response.json()["error_type"] == "temporarily_unavailable"
    assert "retry-after" in response.headers
    assert _counts(fakes) == (3, 3)


def test_an_open_circuit_puts_the_provider_last(client: openai.OpenAI, gateway: GatewayHarness,
                                                fakes: Fakes) -> None:
    """Failures recorded by the worker open openai's circuit; the plan then starts at the backup."""
    fakes[0].failures = [503] * 6
    for _ in range(2):  # 2 requests x 3 attempts: six failures, none answered by openai
        raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
        assert raw.headers["x-megabrain-provider"] == "backup"
    assert _counts(fakes) == (6, 2)
    state = _gateway(gateway)
    assert wait_until(lambda: state.health.state("openai") == "open", 10, 0.05)
    plan = plan_for(state.catalog, "openai/gpt-4o-mini", healthy=state.health.healthy)
    assert [r.provider for r in plan] == ["backup", "openai"]
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-megabrain-provider"] == "backup"
    assert _counts(fakes) == (6, 3)  # openai was not even tried


def _gateway(harness: GatewayHarness) -> Gateway:
    return harness.server.config.app.state.gateway  # type: ignore[union-attr]
