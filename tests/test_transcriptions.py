"""Audio transcriptions end to end: multipart in, audio through a short-lived Redis key, multipart upstream.

After every request, whatever its outcome, no ``<namespace>:blob:*`` key may remain in Redis.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest

from common.redis import connect
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, auth, env_for, sdk_for, wait_until, with_test_key


def make_wav(seconds: float = 0.25, rate: int = 8000) -> bytes:
    """A short silent mono 16-bit WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


WAV = make_wav()


def blob_keys(redis_url: str, gateway: GatewayHarness) -> list[bytes]:
    async def scan() -> list[bytes]:
        redis = connect(redis_url)
        try:
            return [key async for key in redis.scan_iter(match=f"{gateway.settings.namespace}:blob:*")]
        finally:
            await redis.aclose()

    return asyncio.run(scan())


def wait_no_blobs(redis_url: str, gateway: GatewayHarness) -> list[bytes]:
    """The blob keys still there once the request's cleanup had a few seconds to run (normally at once)."""
    wait_until(lambda: not blob_keys(redis_url, gateway), 10, 0.05)
    return blob_keys(redis_url, gateway)


def upload_of(state: OpenAIFakeState) -> dict:
    return state.requests[-1]["body"]


def test_json_transcription(client: openai.OpenAI, gateway: GatewayHarness, redis_url: str,
                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("hello.wav", WAV, "audio/wav"),
                                                               language="en", prompt="a greeting", temperature=0.2)
    assert raw.parse().text == f"transcribed {len(WAV)} bytes"
    assert raw.headers["x-megabrain-provider"] == "openai"
    assert raw.http_response.json()["usage"] == {"type": "duration", "seconds": 1, "cost": 0.0001}  # $0.36/h
    sent = upload_of(fake_openai[0])
    assert sent["file"] == {"filename": "hello.wav", "content_type": "audio/wav", "size": len(WAV)}
    assert sent["model"] == "whisper-1" and sent["language"] == "en" and sent["prompt"] == "a greeting"
    assert float(sent["temperature"]) == 0.2
    assert wait_no_blobs(redis_url, gateway) == []


@pytest.mark.parametrize("fmt, expected", [
    ("text", "transcribed {n} bytes"),
    ("srt", "1\n00:00:00,000 --> 00:00:01,000\ntranscribed {n} bytes\n\n"),
    ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\ntranscribed {n} bytes\n\n"),
])
def test_text_formats_are_plain_text(client: openai.OpenAI, gateway: GatewayHarness, redis_url: str,
                                     fmt: str, expected: str) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", WAV),
                                                               response_format=fmt)
    assert raw.parse() == expected.format(n=len(WAV))
    assert raw.headers["content-type"].startswith("text/plain")
    assert wait_no_blobs(redis_url, gateway) == []


def test_verbose_json_with_granularities(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    result = client.audio.transcriptions.create(model="whisper-1", file=("clip.mp3", WAV),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    assert result.words and result.segments
    assert upload_of(fake_openai[0])["timestamp_granularities[]"] == ["word", "segment"]
    assert upload_of(fake_openai[0])["file"]["filename"] == "clip.mp3"  # the extension survives


def test_upload_over_the_limit_is_refused_unforwarded(gateway: GatewayHarness, gateway_env: dict[str, str],
                                                      redis_url: str,
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    big = b"\x00" * (26 * 1024 * 1024)
    response = httpx.post(gateway.url + "/v1/audio/transcriptions", headers=auth(gateway_env), timeout=30,
                          data={"model": "whisper-1"}, files={"file": ("big.wav", big, "audio/wav")})
    assert response.status_code == 413
    assert response.json()["error_type"] == "payload_too_large"
    assert fake_openai[0].requests == []
    assert blob_keys(redis_url, gateway) == []


def test_upload_over_the_limit_without_content_length(gateway: GatewayHarness, gateway_env: dict[str, str],
                                                      redis_url: str,
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """A chunked upload has no declared length: the running count stops it."""
    boundary = "testboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(27):
            yield b"\x00" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**auth(gateway_env), "content-type": f"multipart/form-data; boundary={boundary}"}
    response = httpx.post(gateway.url + "/v1/audio/transcriptions", headers=headers, content=chunks(), timeout=30)
    assert response.status_code == 413
    assert fake_openai[0].requests == []
    assert blob_keys(redis_url, gateway) == []


AUDIO = ("a.wav", WAV, "audio/wav")


@pytest.mark.parametrize("parts, param", [
    ({"model": (None, "whisper-1")}, "file"),
    ({"file": AUDIO}, "model"),
    ({"model": (None, "whisper-1"), "response_format": (None, "xml"), "file": AUDIO}, "response_format"),
    ({"model": (None, "whisper-1"), "temperature": (None, "hot"), "file": AUDIO}, "temperature"),
    ({"model": (None, "gpt-4o-mini"), "file": AUDIO}, "model"),
])
def test_invalid_uploads(gateway: GatewayHarness, gateway_env: dict[str, str], redis_url: str,
                         fake_openai: tuple[OpenAIFakeState, str], parts: dict, param: str) -> None:
    response = httpx.post(gateway.url + "/v1/audio/transcriptions", headers=auth(gateway_env), timeout=20,
                          files=parts)  # (None, value) parts are plain fields
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []
    assert blob_keys(redis_url, gateway) == []


def test_retry_after_upstream_error_resends_the_audio(client: openai.OpenAI, gateway: GatewayHarness,
                                                      redis_url: str,
                                                      fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [500]
    state.retry_after = 0
    result = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert result.text == f"transcribed {len(WAV)} bytes"
    assert [r["body"]["file"]["size"] for r in state.requests] == [len(WAV), len(WAV)]
    assert wait_no_blobs(redis_url, gateway) == []


def test_upstream_error_leaves_nothing(client: openai.OpenAI, gateway: GatewayHarness, redis_url: str,
                                       fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.failures = [503, 503, 503]
    state.retry_after = 0
    with pytest.raises(openai.InternalServerError):
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert len(state.requests) == 3
    assert wait_no_blobs(redis_url, gateway) == []
    state.failures = [400]
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert wait_no_blobs(redis_url, gateway) == []


def test_client_gone_leaves_nothing(gateway: GatewayHarness, gateway_env: dict[str, str], redis_url: str,
                                    fake_openai: tuple[OpenAIFakeState, str], caplog: pytest.LogCaptureFixture) -> None:
    """The client leaves while the worker waits to retry (the audio is back in Redis by then): the job is
    dropped there, so the retry it was waiting for never happens."""
    caplog.set_level(logging.INFO, logger="megabrain")
    state, _ = fake_openai
    state.failures = [503]
    state.retry_after = 10  # the worker would wait this long before its retry (under the 30 s deadline)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/audio/transcriptions", headers=auth(gateway_env), timeout=1.0,
                   data={"model": "whisper-1"}, files={"file": ("a.wav", WAV, "audio/wav")})
    assert wait_no_blobs(redis_url, gateway) == []
    assert gateway.process is not None
    assert wait_until(lambda: any("cancelled by the web tier" in r.getMessage() for r in caplog.records), 20)
    assert wait_until(lambda: not gateway.process.runtime.active, 5)  # no job left that could retry
    assert len(state.requests) == 1
    assert blob_keys(redis_url, gateway) == []


@pytest.fixture
def groq_gateway(redis_url: str,
                 fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[tuple[GatewayHarness, dict[str, str]]]:
    _, upstream = fake_openai
    env = with_test_key(env_for(redis_url, GROQ_BASE_URL=upstream, GROQ_API_KEY="gsk-test"))
    with GatewayHarness.from_env(env, pools=("groq",)) as harness:
        yield harness, env


def test_groq_transcription(groq_gateway: tuple[GatewayHarness, dict[str, str]], redis_url: str,
                            fake_openai: tuple[OpenAIFakeState, str]) -> None:
    harness, env = groq_gateway
    result = sdk_for(harness.url, env).audio.transcriptions.create(model="groq/whisper-large-v3-turbo",
                                                           file=("voice.m4a", WAV))
    assert result.text == f"transcribed {len(WAV)} bytes"
    sent = fake_openai[0].requests[-1]
    assert sent["body"]["model"] == "whisper-large-v3-turbo"
    assert sent["body"]["file"]["filename"] == "voice.m4a"
    assert sent["headers"]["authorization"] == "Bearer gsk-test"
    assert wait_no_blobs(redis_url, harness) == []
