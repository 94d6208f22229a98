"""The fake OpenAI upstream must be parseable by the official SDK, or gateway tests built on it prove nothing."""

from __future__ import annotations

import io
import json
import wave
from typing import Iterator

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import reassemble, wait_until

MESSAGES = [{"role": "user", "content": "Say hello to the fake upstream."}]


@pytest.fixture(scope="module")
def server_and_state() -> Iterator[tuple[ThreadedServer, OpenAIFakeState]]:
    state = OpenAIFakeState()
    with ThreadedServer(create_openai_app(state)) as server:
        yield server, state


@pytest.fixture
def state(server_and_state: tuple[ThreadedServer, OpenAIFakeState]) -> OpenAIFakeState:
    server_and_state[1].reset()
    return server_and_state[1]


@pytest.fixture
def url(server_and_state: tuple[ThreadedServer, OpenAIFakeState], state: OpenAIFakeState) -> str:
    return server_and_state[0].url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=10) as c:
        yield c


def wait_for(predicate) -> bool:
    """Counters are bumped in the server thread just after the last bytes leave; give it a moment."""
    return wait_until(predicate, 10, 0.01)


def tiny_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)
    return buf.getvalue()


def test_non_streaming_chat(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.tokens = 3
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.model == "gpt-4o-mini"
    assert reply.choices[0].message.content == "tok0 tok1 tok2 "
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 3
    logged = state.requests[-1]
    assert logged["path"] == "/v1/chat/completions"
    assert logged["headers"]["authorization"] == "Bearer x"
    assert logged["body"]["messages"] == MESSAGES


def test_n_choices_and_max_tokens(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    reply = client.chat.completions.create(model="m", messages=MESSAGES, n=2, max_tokens=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert {c.message.content for c in reply.choices} == {"tok0 tok1 "}
    assert reply.choices[0].finish_reason == "length"


def test_streaming_with_usage(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.tokens = 5
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert reassemble(chunks)["text"] == "tok0 tok1 tok2 tok3 tok4 "  # what tests.harness.tokens_text(5) says
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and all(c.model == "gpt-4o" for c in chunks)


@pytest.mark.parametrize("usage_in,include", [("separate", True), ("null", True), ("finish", False),
                                              ("none", True), ("separate", False)])
def test_stream_wire_framing(url: str, state: OpenAIFakeState, usage_in: str, include: bool) -> None:
    state.tokens, state.usage_in = 2, usage_in
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": include}}
    with httpx.Client() as http:
        response = http.post(url + "/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    events = [json.loads(e[len("data: "):]) for e in response.text.split("\n\n")[:-2]]
    with_usage = [e for e in events if e.get("usage")]
    if usage_in == "none" or (usage_in in ("separate", "null") and not include):
        assert with_usage == []
    elif usage_in == "finish":
        assert with_usage == [events[-1]] and events[-1]["choices"][0]["finish_reason"] == "stop"
    else:
        assert with_usage == [events[-1]] and events[-1]["choices"] == ([] if usage_in == "separate" else None)
        assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_stream_reassembles(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.tool_calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}]
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                assert call["id"] == "", "only the first fragment carries the id"
                call["id"], call["name"] = delta.id, delta.function.name
            call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["arguments"]) == {"tz": "Europe/Paris"}
    assert calls[0]["id"] != calls[1]["id"]


def test_tool_calls_non_streaming(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.tool_calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    reply = client.chat.completions.create(model="m", messages=MESSAGES)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_embeddings_base64_default_and_float_agree(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    default = client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog"])
    assert state.requests[-1]["body"]["encoding_format"] == "base64"
    floats = client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog"], encoding_format="float")
    assert state.requests[-1]["body"]["encoding_format"] == "float"
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data[0].embedding) == 8 and default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens > 0
    sized = client.embeddings.create(model="e", input=[[1, 2, 3]], dimensions=3)
    assert len(sized.data[0].embedding) == 3 and sized.usage.prompt_tokens == 3


def test_transcription_json_and_text(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    audio = tiny_wav()
    result = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio, "audio/wav"))
    assert result.text == f"transcribed {len(audio)} bytes"
    form = state.requests[-1]["body"]
    assert form["model"] == "whisper-1" and form["file"]["filename"] == "clip.wav"
    assert form["_file_bytes"] == audio
    text = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio), response_format="text")
    assert text == f"transcribed {len(audio)} bytes"
    verbose = client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", audio),
                                                 response_format="verbose_json", timestamp_granularities=["word"])
    assert verbose.words and verbose.words[0].word == "transcribed"


def test_transcription_needs_file_extension(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("clip", tiny_wav()))
    assert caught.value.param == "file"


def test_models_list(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]


@pytest.mark.parametrize("status,exc,code", [
    (429, openai.RateLimitError, "rate_limit_exceeded"),
    (500, openai.InternalServerError, None),
    (404, openai.NotFoundError, "model_not_found"),
])
def test_scripted_status_maps_to_sdk_exception(client: openai.OpenAI, state: OpenAIFakeState,
                                               status: int, exc: type, code: str | None) -> None:
    state.failures = [status]
    state.retry_after = "0"
    with pytest.raises(exc) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == status and caught.value.code == code
    assert caught.value.response.headers.get("retry-after") == ("0" if status != 404 else None)
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices, "script consumed once"


def test_required_key(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.require_key = "secret"
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"


def test_reset_drops_connection(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.failures = ["reset"]
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def test_hang_times_out(url: str, state: OpenAIFakeState) -> None:
    state.failures = ["hang"]
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="m", messages=MESSAGES)


def test_midstream_error_raises_in_sdk(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.failures = ["midstream_error"]
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["", "tok0 ", "tok1 "]
    assert not isinstance(caught.value, openai.APIStatusError)


def test_cut_stream_ends_without_finish(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    state.failures = ["cut"]
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert [c.choices[0].delta.content for c in chunks] == ["", "tok0 ", "tok1 "]
    assert all(c.choices[0].finish_reason is None for c in chunks)


def test_client_disconnect_counts_closed_early(url: str, state: OpenAIFakeState) -> None:
    state.tokens, state.token_delay = 500, 0.02
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.Client() as http:
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            first = next(response.iter_bytes())
            assert first.startswith(b"data: ")
    assert wait_for(lambda: state.streams_closed_early == 1)
    assert state.streams_open == 1 and state.streams_completed == 0


def test_finished_stream_is_not_counted_early(client: openai.OpenAI, state: OpenAIFakeState) -> None:
    list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert wait_for(lambda: state.streams_completed == 1)
    assert state.streams_closed_early == 0
