"""How a stream starts and how a request runs out of time, as README promises ("Streams end properly or say
why", Errors):

- a stream that fails before its first token gets its proper HTTP status: the status line waits up to
  ``MEGABRAIN_STREAM_COMMIT_WAIT`` seconds for the first event;
- after that, keep-alive comments (every ``MEGABRAIN_KEEPALIVE_INTERVAL``) hold the connection, and a
  failure still to come arrives in-band as the error frame;
- a request whose deadline (``MEGABRAIN_REQUEST_TIMEOUT``) passes gets 504 ``upstream_timeout``.

The upstream is held back by the fake's gate (``OpenAIFakeState.hold``), released once the client has
seen what it waits for: no test here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, GatewayHarness, auth, reassemble, sdk_for

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def held(fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[threading.Event]:
    """The fake's gate: its answers wait until the test sets it (set at the end whatever happened)."""
    gate = threading.Event()
    fake_openai[0].hold = gate
    yield gate
    gate.set()


def _gateway(env: dict[str, str], **settings: str) -> GatewayHarness:
    return GatewayHarness.from_env({**env, **settings})


@pytest.mark.parametrize(("failures", "status", "error_type"), [
    ([400], 400, "invalid_request"),  # the upstream refused the request: not retried
    ([503, 503, 503], 503, "temporarily_unavailable"),  # down after the retries
])
def test_a_stream_that_fails_before_its_first_token_gets_its_status(
        gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str], failures: list[int], status: int,
        error_type: str) -> None:
    state, _ = fake_openai
    state.failures, state.retry_after = list(failures), 0
    # a commit wait far beyond the retries, so the failure certainly comes before the status line is due
    with _gateway(gateway_env, MEGABRAIN_STREAM_COMMIT_WAIT="60") as gateway:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY, headers=auth(gateway_env),
                          timeout=30) as response:
            body = response.read()
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")  # an envelope, not a stream
        assert json.loads(body)["error_type"] == error_type
        if status == 503:
            assert int(response.headers["retry-after"]) >= 1
        # what the SDK makes of it: the status's own exception, raised by create(), before any iteration
        state.failures = list(failures)
        with pytest.raises(openai.APIStatusError) as raised:
            sdk_for(gateway.url, gateway_env).chat.completions.create(stream=True, **{
                k: v for k, v in BODY.items() if k != "stream"})
        assert raised.value.status_code == status


def test_keep_alive_comments_hold_a_stream_until_its_first_token(gateway_env: dict[str, str],
                                                                 fake_openai: tuple[OpenAIFakeState, str],
                                                                 held: threading.Event) -> None:
    """Past the commit wait the status line (200) goes out with a comment, and comments repeat until the
    first token; then the answer as usual."""
    with _gateway(gateway_env, MEGABRAIN_STREAM_COMMIT_WAIT="0.2", MEGABRAIN_KEEPALIVE_INTERVAL="0.2") as gateway:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY, headers=auth(gateway_env),
                          timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            comments = []
            for line in lines:  # the upstream is held: only keep-alives can come
                if line:
                    assert line.startswith(":"), line
                    comments.append(line)
                if len(comments) == 3:
                    break
            held.set()  # now the upstream answers
            rest = [line for line in lines if line]
    assert comments == [": keep-alive"] * 3
    data = [line[len("data: "):] for line in rest if not line.startswith(":")]
    assert all(line.startswith(("data: ", ":")) for line in rest)
    assert data[-1] == "[DONE]" and reassemble(data)["text"] == EXPECTED


def test_a_failure_after_the_commit_wait_is_the_in_band_error_frame(gateway_env: dict[str, str],
                                                                     fake_openai: tuple[OpenAIFakeState, str],
                                                                     held: threading.Event) -> None:
    state, _ = fake_openai
    with _gateway(gateway_env, MEGABRAIN_STREAM_COMMIT_WAIT="0.2", MEGABRAIN_KEEPALIVE_INTERVAL="0.2") as gateway:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY, headers=auth(gateway_env),
                          timeout=30) as response:
            assert response.status_code == 200  # committed: the status can no longer say it
            lines = response.iter_lines()
            assert next(line for line in lines if line) == ": keep-alive"
            state.failures = [400]  # taken by the held request once released: refused, not retried
            held.set()
            rest = [line for line in lines if line and not line.startswith(":")]
    assert len(rest) == 1 and "[DONE]" not in rest[0]
    frame = json.loads(rest[0][len("data: "):])
    assert frame["error"]["type"] == "invalid_request" and frame["error_type"] == "invalid_request"


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_its_deadline_is_504_upstream_timeout(gateway_env: dict[str, str],
                                                            fake_openai: tuple[OpenAIFakeState, str],
                                                            stream: bool) -> None:
    """The upstream never answers (it hangs until its connection closes): the request's deadline ends it.
    The stream's status line waits longer than the deadline, so the 504 is its status too."""
    state, _ = fake_openai
    state.failures = ["hang"]
    with _gateway(gateway_env, MEGABRAIN_REQUEST_TIMEOUT="2", MEGABRAIN_STREAM_COMMIT_WAIT="30",
                  MEGABRAIN_HEARTBEAT_TIMEOUT="60") as gateway:
        response = httpx.post(gateway.url + "/v1/chat/completions", json={**BODY, "stream": stream},
                              headers=auth(gateway_env), timeout=30)
    assert response.status_code == 504, response.text
    body = response.json()
    assert body["error_type"] == "upstream_timeout" and body["error"]["type"] == "upstream_timeout"
    assert len(state.requests) == 1  # never retried past the deadline
