"""Chat completions end to end: OpenAI SDK → API → Redis queue → worker → fake upstream → pub/sub → SDK."""

from __future__ import annotations

from decimal import Decimal

import json
import logging

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import EXPECTED, GatewayHarness, auth, reassemble, wait_until

MESSAGES = [{"role": "user", "content": "Say hello"}]  # gpt-4o-mini is a paid model: requests carry the test key


def test_non_streaming_through_the_queue(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    assert raw.headers["x-megabrain-provider"] == "openai"
    cost = completion.usage.cost  # type: ignore[attr-defined]
    assert isinstance(cost, float) and cost > 0  # a JSON number, as OpenRouter sends it
    assert Decimal(raw.headers["x-megabrain-cost"]) == Decimal(str(cost))
    assert '"cost":' + raw.headers["x-megabrain-cost"] in raw.http_response.text  # exact digits on the wire
    assert raw.headers["x-request-id"]
    state, _ = fake_openai
    sent = state.requests[-1]
    assert sent["body"]["model"] == "gpt-4o-mini"  # the upstream's own id
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-test"


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert reassemble(chunks)["text"] == EXPECTED
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 16
    assert len({c.id for c in chunks}) == 1


def test_streaming_without_usage_still_asks_upstream(client: openai.OpenAI,
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    assert reassemble(chunks)["text"] == EXPECTED
    state, _ = fake_openai
    assert state.requests[-1]["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str], stream: bool) -> None:
    state, _ = fake_openai
    state.tool_calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        {"name": "get_time", "arguments": '{"tz": "CET"}'}]
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("get_weather", "get_time")]
    if not stream:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools)
        calls = completion.choices[0].message.tool_calls
        assert completion.choices[0].finish_reason == "tool_calls"
    else:
        got = reassemble(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools,
                                                        stream=True))
        assert got["finish"] == "tool_calls"
        calls = [type("Call", (), {"id": v["id"], "function": type("F", (), v)}) for v in got["calls"]]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]
    assert len({c.id for c in calls}) == 2 and all(c.id for c in calls)


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_both_paths_and_curl_style_stream(gateway: GatewayHarness, gateway_env: dict[str, str], path: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.url + path, json=body, headers=auth(gateway_env), timeout=20) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") or line.startswith(":") for line in lines)
    plain = httpx.post(gateway.url + path, json={**body, "stream": False}, headers=auth(gateway_env), timeout=20)
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == EXPECTED


def test_fields_forwarded_by_allow_list(gateway: GatewayHarness, gateway_env: dict[str, str],
                                        fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """OpenAI gets the fields its API documents (router/forwarding.py); a field it does not know (a 400
    there: "Unrecognized request argument supplied") or one that would keep users' data on the operator's
    account is not sent."""
    state, _ = fake_openai
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "logit_bias": {"50256": -100}, "custom_thing": [1],
            "store": True, "metadata": {"who": "me"}, "top_k": 3}
    assert httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=auth(gateway_env),
                      timeout=20).status_code == 200
    sent = state.requests[-1]["body"]
    assert sent["logit_bias"] == {"50256": -100}
    assert not {"custom_thing", "store", "metadata", "top_k"} & set(sent)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"model": "gpt-4o-mini", "messages": MESSAGES, "top_p": "x"}, "top_p"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ],
)
def test_invalid_requests_name_the_field(gateway: GatewayHarness, body: dict, param: str) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400
    payload = response.json()
    assert payload["error_type"] == "invalid_request"
    assert payload["error"]["type"] == "invalid_request"
    assert payload["error"]["param"] == param
    assert param.split(".")[0].split("[")[0] in payload["error"]["message"]


def test_sdk_maps_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=5)
    assert bad.value.code == "INVALID_REQUEST"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model-anywhere", messages=MESSAGES)
    assert missing.value.body["type"] == "model_not_found"  # type: ignore[index]


def test_not_json_and_too_large(gateway: GatewayHarness) -> None:
    response = httpx.post(gateway.url + "/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 400 and response.json()["error_type"] == "invalid_request"
    huge = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    response = httpx.post(gateway.url + "/chat/completions", content=huge, timeout=20)
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"


def test_unknown_route_is_an_envelope(gateway: GatewayHarness) -> None:
    response = httpx.get(gateway.url + "/v1/nope", timeout=10)
    assert response.status_code == 404
    assert response.json()["error_type"] == "not_found"


def test_upstream_500_is_retried(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [500]
    state.retry_after = 0
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == EXPECTED
    assert len(state.requests) == 2


def test_upstream_stream_reset_before_tokens_is_retried(client: openai.OpenAI,
                                                        fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = ["reset"]
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert reassemble(chunks)["text"] == EXPECTED
    assert len(state.requests) == 2


def test_upstream_400_passes_through_unretried(client: openai.OpenAI,
                                               fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [400]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(state.requests) == 1
    body = err.value.response.json()
    assert body["error_type"] == "invalid_request"
    assert "openai" in body["error"]["message"]


@pytest.mark.parametrize("failure", ["midstream_error", "cut"])
def test_failure_after_tokens_ends_stream_with_error(client: openai.OpenAI,
                                                     fake_openai: tuple[OpenAIFakeState, str],
                                                     failure: str) -> None:
    state, _ = fake_openai
    state.failures = [failure]
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            received += "".join(c.delta.content or "" for c in chunk.choices)
    assert received.startswith("tok0 ") and received != EXPECTED
    assert len(state.requests) == 1  # never restarted after tokens were sent


def test_upstream_down_after_retries_is_503(gateway: GatewayHarness, gateway_env: dict[str, str],
                                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [503, 503, 503, 503]
    state.retry_after = 0
    response = httpx.post(gateway.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES},
                          headers=auth(gateway_env), timeout=20)
    assert response.status_code == 503
    assert response.json()["error_type"] == "temporarily_unavailable"
    assert "retry-after" in response.headers
    assert len(state.requests) == 3  # the first try and two retries


def test_client_disconnect_closes_upstream(gateway: GatewayHarness, gateway_env: dict[str, str],
                                           fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.tokens = 200
    state.token_delay = 0.05
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=auth(gateway_env),
                      timeout=20) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
    assert wait_until(lambda: state.streams_closed_early == 1, 10)
    assert state.streams_completed == 0


def test_no_worker_is_a_503_without_queueing(gateway_env: dict[str, str]) -> None:
    """Refused at once, never queued into the void: with a pickup timeout far beyond the client's read timeout,
    only the refusal without a queue entry can answer in time."""
    env = {**gateway_env, "MEGABRAIN_PICKUP_TIMEOUT": "120", "MEGABRAIN_REQUEST_TIMEOUT": "300"}
    with GatewayHarness.from_env(env, pools=()) as lonely:
        response = httpx.post(lonely.url + "/v1/chat/completions",
                              json={"model": "gpt-4o-mini", "messages": MESSAGES}, headers=auth(gateway_env),
                              timeout=30)
        assert response.status_code == 503
        assert response.json()["error_type"] == "temporarily_unavailable"
        assert "No worker is serving openai" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) >= 1


def test_client_disconnect_stops_a_non_streaming_job(gateway: GatewayHarness, gateway_env: dict[str, str],
                                                     fake_openai: tuple[OpenAIFakeState, str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The upstream call would never end by itself (it hangs until its connection closes): the worker drops
    it when the client leaves, and says so."""
    caplog.set_level(logging.INFO, logger="megabrain")
    state, _ = fake_openai
    state.failures = ["hang"]
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=auth(gateway_env), timeout=0.5)
    assert gateway.process is not None
    assert wait_until(lambda: any("cancelled by the web tier" in r.getMessage() for r in caplog.records), 20)
    assert wait_until(lambda: not gateway.process.runtime.active, 5)
    assert len(state.requests) == 1
