"""The web app's two ways in (api/app.py): the model routes by a dict lookup, everything else through
Starlette's router; both end every refusal and unexpected error in the documented envelope."""

from __future__ import annotations

import logging

import httpx
import pytest

import api.routes.chat
from tests.harness import GatewayHarness

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_model_routes_answer_under_every_base(gateway: GatewayHarness, gateway_env: dict[str, str]) -> None:
    headers = {"authorization": f"Bearer {gateway_env['MEGABRAIN_TEST_API_KEY']}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=20) as http:
        for path in ("/chat/completions", "/v1/chat/completions", "/api/v1/chat/completions"):
            answer = http.post(path, json=BODY)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.json()["choices"][0]["message"]["content"]


def test_an_unexpected_error_on_a_model_route_is_the_envelope(gateway: GatewayHarness, gateway_env: dict[str, str],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in planning")

    monkeypatch.setattr(api.routes.chat, "plan_for", broken)
    headers = {"authorization": f"Bearer {gateway_env['MEGABRAIN_TEST_API_KEY']}"}
    with caplog.at_level(logging.ERROR, logger="megabrain.api"), \
            httpx.Client(base_url=gateway.url, headers=headers, timeout=20) as http:
        answer = http.post("/v1/chat/completions", json=BODY)
    assert answer.status_code == 500
    assert answer.json()["error_type"] == "internal_error"
    assert "a bug in planning" not in answer.text  # no internals to the client
    assert any("unhandled error on /v1/chat/completions" in r.getMessage() for r in caplog.records)


def test_other_methods_and_paths_go_through_the_router(gateway: GatewayHarness) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        wrong_method = http.get("/v1/chat/completions")
        unknown = http.post("/v1/chat/completion", json=BODY)
    assert wrong_method.status_code == 405 and wrong_method.json()["error_type"] == "method_not_allowed"
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "not_found"
