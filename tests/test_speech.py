"""``POST /audio/speech`` end to end: the OpenAI SDK's streaming response, byte for byte, through the queue.

The audio is binary all the way (no base64), in events of at most 256 KiB, billed per character; bad input
(an unknown voice, instructions to a model without them, too much text) is refused before any upstream call.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.openai_more import speech_bytes
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, auth


def test_streamed_to_a_file_byte_for_byte(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str],
                                          tmp_path: Path) -> None:
    target = tmp_path / "hello.opus"
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="Hello world", response_format="opus", speed=1.25) as response:
        assert response.headers["content-type"] == "audio/opus"
        request_id = response.headers["x-request-id"]
        response.stream_to_file(target)
    assert target.read_bytes() == speech_bytes("Hello world", "alloy", "opus", 20000)
    record = client.get("/generation", cast_to=object, options={"params": {"id": f"gen-{request_id}"}})["data"]
    assert record["model"] == "openai/tts-1"
    assert Decimal(str(record["total_cost"])) == Decimal("0.000015") * 11  # $15 per million characters
    sent = fake_openai[0].requests[-1]
    assert sent["path"] == "/v1/audio/speech"
    assert sent["body"] == {"model": "tts-1", "voice": "alloy", "input": "Hello world", "response_format": "opus",
                            "speed": 1.25}


def test_large_audio_in_pieces(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    fake_openai[0].speech_size = 3_500_000  # many events of at most 256 KiB
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="marin", input="A long story.",
                                       instructions="Speak slowly.", response_format="wav")
    assert audio.content == speech_bytes("A long story.", "marin", "wav", 3_500_000)
    assert audio.response.headers["content-type"] == "audio/wav"


def test_listed_as_speech_models(gateway: GatewayHarness) -> None:
    listed = {m["id"] for m in httpx.get(gateway.url + "/v1/models?modality=speech", timeout=20).json()["data"]}
    assert {"openai/tts-1", "openai/tts-1-hd", "openai/gpt-4o-mini-tts"} <= listed


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": "tts-1", "input": "hi", "voice": "marin"}, "voice"),  # a gpt-4o-mini-tts voice
        ({"model": "tts-1", "input": "hi", "voice": "nobody"}, "voice"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "instructions": "whisper"}, "instructions"),
        ({"model": "tts-1", "input": "x" * 4097, "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": "", "voice": "alloy"}, "input"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 5}, "speed"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
        ({"model": "gpt-4o-mini-tts", "input": "hi", "voice": "alloy", "stream_format": "sse"}, "stream_format"),
        ({"model": "gpt-4o-mini", "input": "hi", "voice": "alloy"}, "model"),
    ],
)
def test_refused_before_any_upstream_call(gateway: GatewayHarness, gateway_env: dict[str, str],
                                          fake_openai: tuple[OpenAIFakeState, str], payload: dict,
                                          param: str) -> None:
    response = httpx.post(gateway.url + "/v1/audio/speech", json=payload, headers=auth(gateway_env), timeout=20)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []


def test_upstream_error_before_the_first_byte_is_retried(client: openai.OpenAI,
                                                         fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state = fake_openai[0]
    state.failures, state.retry_after = [503], 0
    audio = client.audio.speech.create(model="tts-1-hd", voice="nova", input="Again")
    assert audio.content == speech_bytes("Again", "nova", "mp3", 20000)
    assert len(state.requests) == 2


def test_upstream_dying_after_the_first_bytes_cuts_the_body_and_bills_nothing(
        client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Bytes already reached the client: no retry (it would repeat them), the body ends without its end
    (the client sees an incomplete transfer, not a short file that looks whole), and nothing is billed."""
    fake_openai[0].failures = ["cut"]
    with pytest.raises(Exception) as cut:  # the SDK's HTTP client's RemoteProtocolError
        with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy",
                                                                input="Cut short") as response:
            request_id = response.headers["x-request-id"]
            response.read()
    assert "incomplete chunked read" in str(cut.value)
    assert len(fake_openai[0].requests) == 1
    with pytest.raises(openai.NotFoundError):  # no generation record: the request was not billed
        client.get("/generation", cast_to=object, options={"params": {"id": f"gen-{request_id}"}})
