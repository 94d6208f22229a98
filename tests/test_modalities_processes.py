"""The routes beyond chat in production shape (``megabrain web`` and ``megabrain worker`` as separate
processes), and an image model's fallback from one provider to another."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.openai_more import image_bytes, speech_bytes
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, ProcessGateway, env_for, sdk_for, with_test_key


def test_every_route_through_web_and_worker_processes(gateway_env: dict[str, str], tmp_path: Path) -> None:
    with ProcessGateway(gateway_env) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gateway_env["MEGABRAIN_TEST_API_KEY"],
                               max_retries=0, timeout=30)
        chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="a", suffix="b",
                                                max_tokens=2, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "<fim 1|1>tok0 tok1 "
        image = client.images.generate(model="dall-e-2", prompt="p", response_format="b64_json")
        assert base64.b64decode(image.data[0].b64_json or "") == image_bytes("p", 0, 2048)
        with client.audio.speech.with_streaming_response.create(model="tts-1", voice="echo", input="hi") as audio:
            audio.stream_to_file(tmp_path / "hi.mp3")
        assert (tmp_path / "hi.mp3").read_bytes() == speech_bytes("hi", "echo", "mp3", 20000)
        assert client.moderations.create(input="kill it").results[0].flagged


@pytest.fixture
def two_image_providers(redis_url: str, fake_openai: tuple[OpenAIFakeState, str], tmp_path: Path,
                        ) -> Iterator[tuple[OpenAIFakeState, OpenAIFakeState, GatewayHarness, dict[str, str]]]:
    """gpt-image-1 at OpenAI and at a second OpenAI-compatible provider ("backup") the config file adds."""
    backup = OpenAIFakeState()
    with ThreadedServer(create_openai_app(backup)) as server:
        config = tmp_path / "megabrain.toml"
        config.write_text(
            f'[providers.backup]\nkind = "openai"\nbase_url = "{server.url}/v1"\ncapabilities = ["images"]\n\n'
            '[[models]]\nid = "backup/gpt-image-1"\nprovider = "backup"\nupstream_id = "gpt-image-1"\n'
            'modality = "image"\npricing = { prompt = "0.000005", completion = "0.00004" }\n')
        env = with_test_key(env_for(redis_url, OPENAI_BASE_URL=fake_openai[1], OPENAI_API_KEY="sk-upstream-test",
                                    MEGABRAIN_CONFIG=str(config), MEGABRAIN_UPSTREAM_MAX_RETRIES="0"))
        with GatewayHarness.from_env(env, pools=("openai", "backup")) as harness:
            yield fake_openai[0], backup, harness, env


def test_image_falls_back_to_the_next_provider(
        two_image_providers: tuple[OpenAIFakeState, OpenAIFakeState, GatewayHarness, dict[str, str]]) -> None:
    primary, backup, harness, env = two_image_providers
    primary.failures = [503]
    raw = sdk_for(harness.url, env).images.with_raw_response.generate(model="openai/gpt-image-1", prompt="cat",
                                                                     quality="low")
    assert base64.b64decode(raw.parse().data[0].b64_json or "") == image_bytes("cat", 0, 2048)
    assert raw.headers["x-megabrain-provider"] == "backup"
    assert len(primary.requests) == 1 and len(backup.requests) == 1
