"""The production shape: ``megabrain web`` and ``megabrain worker`` as separate processes on a real Redis."""

from __future__ import annotations


import httpx
import openai

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import ProcessGateway

EXPECTED = "".join(f"tok{i} " for i in range(16))

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


def test_forwarded_for_is_ignored_without_trusted_hops(gateway_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``megabrain web`` counts the TCP peer, whatever X-Forwarded-For claims, when no proxy hop is trusted
    (uvicorn's own proxy-header rewriting would otherwise hand the peer over to the client's header)."""
    config = tmp_path / "megabrain.toml"
    config.write_text('[limits]\nfree_requests_per_minute = 2\nanonymous_requests_per_day = 100\n'
                      'trusted_proxy_hops = 0\n\n[[models]]\nid = "openai/gpt-4o-mini"\nfree = true\n')
    env = {**gateway_env, "MEGABRAIN_CONFIG": str(config)}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with ProcessGateway(env) as gateway:
        statuses = [
            httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=20,
                       headers={"x-forwarded-for": f"198.51.100.{n}"}).status_code
            for n in range(3)
        ]
    assert statuses == [200, 200, 429]
