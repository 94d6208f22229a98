"""The production shape: ``megabrain web`` and ``megabrain worker`` as separate processes on a real Redis."""

from __future__ import annotations

import os

import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import ProcessGateway

EXPECTED = "".join(f"tok{i} " for i in range(16))

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                reason="separate processes need a real Redis (set REDIS_URL)")


def test_web_and_worker_processes(gateway_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    with ProcessGateway(gateway_env, workers=2) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway_env["MEGABRAIN_TEST_API_KEY"],
                               max_retries=0, timeout=20)
        for _ in range(3):
            completion = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            assert completion.choices[0].message.content == EXPECTED
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED
        assert chunks[-1].usage is not None
