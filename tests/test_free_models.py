"""The first five minutes: free models by environment, and an unknown key is a 401 before anything else."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from common.settings import load_settings
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, env_for

MESSAGES = [{"role": "user", "content": "Hello"}]


def test_free_models_from_the_environment_mark_config_and_catalog_models() -> None:
    settings = load_settings(env={"MEGABRAIN_FREE_MODELS": " openai/gpt-4o-mini, local/tiny ,openai/gpt-4o-mini",
                                  "MEGABRAIN_CONFIG": "/dev/null"})
    assert [(m.id, m.free) for m in settings.models] == [("openai/gpt-4o-mini", True), ("local/tiny", True)]
    assert load_settings(env={"MEGABRAIN_CONFIG": "/dev/null"}).models == []


@pytest.fixture(params=["free", "paid"])
def only_openai(request: pytest.FixtureRequest, redis_url: str,
                fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[tuple[GatewayHarness, bool]]:
    """A gateway with nothing but OPENAI_* set, as README's first command has it; ``free``: plus
    MEGABRAIN_FREE_MODELS=openai/gpt-4o-mini."""
    free = request.param == "free"
    extra = {"MEGABRAIN_FREE_MODELS": "openai/gpt-4o-mini"} if free else {}
    env = env_for(redis_url, OPENAI_BASE_URL=fake_openai[1], OPENAI_API_KEY="sk-upstream-test", **extra)
    with GatewayHarness.from_env(env) as harness:
        yield harness, free


def _chat(harness: GatewayHarness, model: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(harness.url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES},
                      headers=headers or {}, timeout=20)


def test_auto_free_with_only_openai(only_openai: tuple[GatewayHarness, bool]) -> None:
    harness, free = only_openai
    anonymous = _chat(harness, "auto-free", {"authorization": ""})  # README's anonymous SDK example
    if free:
        assert anonymous.status_code == 200, anonymous.text
        assert anonymous.json()["model"] == "openai/gpt-4o-mini"
        assert _chat(harness, "gpt-4o-mini").status_code == 200
    else:
        assert anonymous.status_code == 503 and "free = true" in anonymous.json()["error"]["message"]
        assert "MEGABRAIN_FREE_MODELS" in anonymous.json()["error"]["message"]


@pytest.mark.parametrize("model", ["auto-free", "gpt-4o-mini", "no-such/model"])
def test_unknown_key_is_401_whatever_the_model(only_openai: tuple[GatewayHarness, bool], model: str) -> None:
    harness, _ = only_openai
    response = _chat(harness, model, {"authorization": "Bearer sk-placeholder-of-the-sdk"})
    assert response.status_code == 401, response.text
    assert response.json()["error_type"] == "authentication_required"
