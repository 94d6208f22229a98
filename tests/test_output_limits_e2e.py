"""A request without ``max_tokens`` gets the model's real output limit (models.dev), clipped to what fits
its context, not a fixed 4096: checked on what the Anthropic fake (which requires ``max_tokens``) received.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.auto import estimate_prompt_tokens
from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, configured_gateway, sdk_for

SONNET = "anthropic/claude-sonnet-4-0"


@pytest.fixture(scope="module")
def gateway(redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayHarness, AnthropicFakeState]]:
    state = AnthropicFakeState(api_key="sk-ant-test")
    with ThreadedServer(create_anthropic_app(state)) as server, \
            configured_gateway(redis_url, tmp_path_factory.mktemp("limits"), ("anthropic",), SONNET,
                               ANTHROPIC_BASE_URL=server.url, ANTHROPIC_API_KEY="sk-ant-test") as harness:
        yield harness, state


def test_no_max_tokens_means_the_models_output_limit(gateway: tuple[GatewayHarness, AnthropicFakeState]) -> None:
    harness, state = gateway
    catalog = harness.server.config.app.state.gateway.catalog  # type: ignore[union-attr]
    limit = catalog.get(SONNET).max_output_tokens
    assert limit == 64000  # models.dev's figure for Claude Sonnet 4
    client = sdk_for(harness.url)  # anonymous: the model is free here
    client.chat.completions.create(model=SONNET, messages=[{"role": "user", "content": "Hello"}])
    assert state.requests[-1]["body"]["max_tokens"] == limit
    client.chat.completions.create(model=SONNET, max_tokens=300, messages=[{"role": "user", "content": "Hi"}])
    assert state.requests[-1]["body"]["max_tokens"] == 300  # the client's own value wins
    # 150k tokens of a 200k context (models.dev): the answer gets exactly what is left, the context less the
    # prompt as the gateway estimates it (characters / 4, plus a few tokens per message: README)
    long_messages = [{"role": "user", "content": "word " * 120_000}]  # 600,000 characters
    client.chat.completions.create(model=SONNET, messages=long_messages)
    assert catalog.get(SONNET).context_length == 200_000
    sent = state.requests[-1]["body"]["max_tokens"]
    assert sent == 200_000 - estimate_prompt_tokens(long_messages)
    assert 200_000 - 150_000 - 16 <= sent < 200_000 - 150_000
