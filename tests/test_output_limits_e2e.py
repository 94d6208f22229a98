"""A request without ``max_tokens`` gets the model's real output limit (models.dev), clipped to what fits
its context, not a fixed 4096: checked on what the Anthropic fake (which requires ``max_tokens``) received.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fakes.anthropic_server import AnthropicFakeState, create_anthropic_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, env_for

SONNET = "anthropic/claude-sonnet-4-0"
CONFIG = f"""
[limits]
free_requests_per_minute = 100000
anonymous_requests_per_day = 100000

[[models]]
id = "{SONNET}"
free = true
"""


@pytest.fixture(scope="module")
def gateway(redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayHarness, AnthropicFakeState]]:
    state = AnthropicFakeState(api_key="sk-ant-test")
    config = tmp_path_factory.mktemp("limits") / "megabrain.toml"
    config.write_text(CONFIG)
    with ThreadedServer(create_anthropic_app(state)) as server:
        env = env_for(redis_url, MEGABRAIN_CONFIG=str(config), ANTHROPIC_BASE_URL=server.url,
                      ANTHROPIC_API_KEY="sk-ant-test")
        with GatewayHarness.from_env(env, pools=("anthropic",)) as harness:
            yield harness, state


def test_no_max_tokens_means_the_models_output_limit(gateway: tuple[GatewayHarness, AnthropicFakeState]) -> None:
    harness, state = gateway
    catalog = harness.server.config.app.state.gateway.catalog  # type: ignore[union-attr]
    limit = catalog.get(SONNET).max_output_tokens
    assert limit == 64000  # models.dev's figure for Claude Sonnet 4
    client = openai.OpenAI(base_url=harness.url + "/api/v1", api_key="unused", max_retries=0, timeout=20,
                           default_headers={"Authorization": ""})
    client.chat.completions.create(model=SONNET, messages=[{"role": "user", "content": "Hello"}])
    assert state.requests[-1]["body"]["max_tokens"] == limit
    client.chat.completions.create(model=SONNET, max_tokens=300, messages=[{"role": "user", "content": "Hi"}])
    assert state.requests[-1]["body"]["max_tokens"] == 300  # the client's own value wins
    long_prompt = "word " * 600_000  # ~150k tokens of a 200k context: the answer gets what is left
    client.chat.completions.create(model=SONNET, messages=[{"role": "user", "content": long_prompt}])
    sent = state.requests[-1]["body"]["max_tokens"]
    assert 256 <= sent < limit
