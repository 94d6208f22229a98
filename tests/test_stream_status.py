"""How a stream starts and how a request runs out of time, as README promises ("Streams end properly or say
why", Errors):

- a stream that fails before its first token gets its proper HTTP status: the status line waits up to
  ``MEGABRAIN_STREAM_COMMIT_WAIT`` seconds for the first event;
- after that, keep-alive comments (every ``MEGABRAIN_KEEPALIVE_INTERVAL``) hold the connection, and a
  failure still to come arrives in-band as the error frame;
- a request whose deadline (``MEGABRAIN_REQUEST_TIMEOUT``) passes gets 504 ``upstream_timeout``.

The upstream is held back by the fake's gate (``OpenAIFakeState.hold_answers``), released once the client
has seen what it waits for: no test here depends on how fast the machine is.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, GatewayHarness, auth, reassemble, sdk_for

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _gateway(env: dict[str, str], **settings: str) -> GatewayHarness:
    return GatewayHarness.from_env({**env, **settings})


FAILURES = [([400], 400, "invalid_request"),  # the upstream refused the request: not retried
            ([503, 503, 503], 503, "temporarily_unavailable")]  # down after the retries


def test_a_stream_that_fails_before_its_first_token_gets_its_status(
        gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.retry_after = 0
    # a commit wait far beyond the retries, so the failure certainly comes before the status line is due
    with _gateway(gateway_env, MEGABRAIN_STREAM_COMMIT_WAIT="60") as gateway:
        for failures, status, error_type in FAILURES:
            state.failures = list(failures)
            with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY, headers=auth(gateway_env),
                              timeout=30) as response:
                body = response.read()
            assert response.status_code == status
            assert response.headers["content-type"].startswith("application/json")  # an envelope, no stream
            assert json.loads(body)["error_type"] == error_type
            if status == 503:
                assert int(response.headers["retry-after"]) >= 1
            # what the SDK makes of it: the status's own exception, raised by create(), before any iteration
            state.failures = list(failures)
            with pytest.raises(openai.APIStatusError) as raised:
                sdk_for(gateway.url, gateway_env).chat.completions.create(
                    model=BODY["model"], messages=BODY["messages"], stream=True)
            assert raised.value.status_code == status


def test_past_the_commit_wait_keep_alives_hold_the_stream(gateway_env: dict[str, str],
                                                          fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Past the commit wait the status line (200) goes out with a comment, and comments repeat until the
    first token: then the answer as usual, or, for a failure still to come, the in-band error frame."""
    state, _ = fake_openai
    with _gateway(gateway_env, MEGABRAIN_STREAM_COMMIT_WAIT="0.2", MEGABRAIN_KEEPALIVE_INTERVAL="0.2") as gateway:
        for failure in (None, 400):
            state.hold_answers = True
            try:
                with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=BODY,
                                  headers=auth(gateway_env), timeout=30) as response:
                    assert response.status_code == 200  # committed: the status can no longer say a failure
                    assert response.headers["content-type"].startswith("text/event-stream")
                    lines = response.iter_lines()
                    comments = []
                    for line in lines:  # the upstream is held: only keep-alives can come
                        if line:
                            assert line.startswith(":"), line
                            comments.append(line)
                        if len(comments) == 3:
                            break
                    if failure is not None:
                        state.failures = [failure]  # taken by the held request once released: not retried
                    state.hold_answers = False  # now the upstream answers
                    rest = [line for line in lines if line]
            finally:
                state.hold_answers = False
            assert comments == [": keep-alive"] * 3
            assert all(line.startswith(("data: ", ":")) for line in rest)
            data = [line[len("data: "):] for line in rest if not line.startswith(":")]
            if failure is None:
                assert data[-1] == "[DONE]" and reassemble(data)["text"] == EXPECTED
            else:
                assert len(data) == 1 and data[0] != "[DONE]"
                frame = json.loads(data[0])
                assert frame["error"]["type"] == "invalid_request" and frame["error_type"] == "invalid_request"


def test_a_request_past_its_deadline_is_504_upstream_timeout(gateway_env: dict[str, str],
                                                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """The upstream never answers (it hangs until its connection closes): the request's deadline ends it, JSON
    or stream. The stream's status line waits longer than the deadline, so the 504 is its status too."""
    state, _ = fake_openai
    state.failures = ["hang", "hang"]
    with _gateway(gateway_env, MEGABRAIN_REQUEST_TIMEOUT="2", MEGABRAIN_STREAM_COMMIT_WAIT="30",
                  MEGABRAIN_HEARTBEAT_TIMEOUT="60") as gateway, ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda stream: httpx.post(  # both at once: one deadline to wait out
            gateway.url + "/v1/chat/completions", json={**BODY, "stream": stream}, headers=auth(gateway_env),
            timeout=30), (False, True)))
    for response in responses:
        assert response.status_code == 504, response.text
        body = response.json()
        assert body["error_type"] == "upstream_timeout" and body["error"]["type"] == "upstream_timeout"
    assert len(state.requests) == 2  # one call each, never retried past the deadline


def test_a_deadline_passed_before_any_enqueue_is_504_not_503(gateway_env: dict[str, str],
                                                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A deadline that passes before the job is queued (here: at once) is the request's timeout, not a lack
    of workers: 504 ``upstream_timeout`` without ``Retry-After``, and nothing reaches the upstream."""
    state, _ = fake_openai
    with _gateway(gateway_env, MEGABRAIN_REQUEST_TIMEOUT="0.000001") as gateway:
        for stream in (False, True):
            response = httpx.post(gateway.url + "/v1/chat/completions", json={**BODY, "stream": stream},
                                  headers=auth(gateway_env), timeout=30)
            assert response.status_code == 504, response.text
            assert response.json()["error_type"] == "upstream_timeout"
            assert "retry-after" not in response.headers
    assert state.requests == []
