"""Activity lists every kind of request a signed-in user's key makes, not only chats (README, Accounts): the
settlement writes the generation record of any keyed request, whatever its route, so each kind that bills —
Messages, Responses and Gemini inbound, legacy completions, embeddings, transcriptions, images, speech, rerank, moderations —
shows on the Activity page under its answer's id with the cost it was billed (the lookup's, to the digit),
each request made through the official SDKs. A request of a non-chat kind its worker failed is listed too,
with the error its client got and no cost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.rerank_server import RerankFakeState, create_rerank_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness
from tests.pages import PAID, Browser, accounts_env, keys_in
from tests.test_transcriptions import WAV

PROMPT = "a prompt the activity page must never show"
Account = tuple[GatewayHarness, Browser, str, OpenAIFakeState]


@pytest.fixture(scope="module")
def account(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Account]:
    """One gateway, one signed-in user and their key, shared by every kind (each test makes its own request)."""
    state, cohere = OpenAIFakeState(), RerankFakeState()
    with ThreadedServer(create_openai_app(state)) as server, ThreadedServer(create_rerank_app(cohere)) as reranker:
        env = accounts_env(redis_url, server.url + "/v1", tmp_path_factory.mktemp("kinds"),
                           MEGABRAIN_UPSTREAM_MAX_RETRIES="0", COHERE_BASE_URL=reranker.url + "/compatibility/v1",
                           COHERE_API_KEY=cohere.api_key)
        with GatewayHarness.from_env(env, pools=("openai", "cohere")) as gw:
            browser = Browser(gw.url)
            (key,) = keys_in(browser.join("every.kind@example.org").text)
            yield gw, browser, key, state


def sdk(gw: GatewayHarness, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def gen(raw: object) -> str:
    """The generation id of an answer without an id of its own: ``gen-`` + its ``x-request-id``."""
    return "gen-" + raw.headers["x-request-id"]  # type: ignore[attr-defined]


def messages(gw: GatewayHarness, key: str) -> str:
    client = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)
    answer = client.messages.create(model=PAID, max_tokens=64, messages=[{"role": "user", "content": PROMPT}])
    return "chatcmpl-" + answer.id.removeprefix("msg_")


def responses(gw: GatewayHarness, key: str) -> str:
    raw = sdk(gw, key).responses.with_raw_response.create(model=PAID, input=PROMPT, store=False)
    return "chatcmpl-" + raw.headers["x-request-id"]


def gemini(gw: GatewayHarness, key: str) -> str:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gw.url, timeout=20_000))
    answer = client.models.generate_content(model=PAID, contents=PROMPT)
    return str(answer.response_id)


def completion(gw: GatewayHarness, key: str) -> str:
    return sdk(gw, key).completions.create(model="openai/gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=8).id


def embeddings(gw: GatewayHarness, key: str) -> str:
    return gen(sdk(gw, key).embeddings.with_raw_response.create(model="openai/text-embedding-3-small", input=PROMPT))


def transcription(gw: GatewayHarness, key: str) -> str:
    return gen(sdk(gw, key).audio.transcriptions.with_raw_response.create(model="openai/whisper-1",
                                                                          file=("a.wav", WAV, "audio/wav")))


def image(gw: GatewayHarness, key: str) -> str:
    return gen(sdk(gw, key).images.with_raw_response.generate(model="openai/gpt-image-1", prompt=PROMPT, n=1,
                                                              quality="low"))


def speech(gw: GatewayHarness, key: str) -> str:
    with sdk(gw, key).audio.speech.with_streaming_response.create(model="openai/tts-1", voice="alloy",
                                                                  input=PROMPT) as response:
        response.read()
        return "gen-" + response.headers["x-request-id"]


def rerank(gw: GatewayHarness, key: str) -> str:
    answer = httpx.post(gw.url + "/v1/rerank", headers={"authorization": f"Bearer {key}"}, timeout=20,
                        json={"model": "cohere/rerank-v3.5", "query": PROMPT, "documents": ["a", "b"]})
    assert answer.status_code == 200, answer.text
    return "gen-" + answer.headers["x-request-id"]


def moderation(gw: GatewayHarness, key: str) -> str:
    return sdk(gw, key).moderations.create(model="omni-moderation-latest", input=PROMPT).id


KINDS: dict[str, tuple[Callable[[GatewayHarness, str], str], bool]] = {  # kind: (request, is it priced)
    "messages": (messages, True), "responses": (responses, True), "gemini": (gemini, True), "completion": (completion, True),
    "embeddings": (embeddings, True), "transcription": (transcription, True), "image": (image, True),
    "speech": (speech, True), "rerank": (rerank, True), "moderation": (moderation, False),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_shows_in_activity_with_its_cost(account: Account, kind: str) -> None:
    gw, browser, key, _ = account
    request, priced = KINDS[kind]
    answer_id = request(gw, key)
    looked_up = httpx.get(gw.url + "/api/v1/generation", params={"id": answer_id},
                          headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert looked_up.status_code == 200, looked_up.text
    record = looked_up.json()["data"]
    assert (record["total_cost"] > 0) == priced, record
    page = browser.get("/profile/activity").text
    assert f"<code>{answer_id}</code>" in page, kind
    row = page[:page.index(f"<code>{answer_id}</code>")]
    row = row[row.rindex("<tr>"):]
    assert f"{record['total_cost']:.6f}" in row and record["model"] in row
    assert PROMPT not in page and key not in page


def test_a_failed_embeddings_request_shows_with_its_error(account: Account) -> None:
    gw, browser, key, state = account
    state.failures = [503]
    try:
        with pytest.raises(openai.APIStatusError) as failed:
            sdk(gw, key).embeddings.create(model="openai/text-embedding-3-small", input=PROMPT)
    finally:
        state.failures = []
    answer_id = "gen-" + failed.value.response.headers["x-request-id"]
    page = browser.get("/profile/activity").text
    assert f"<code>{answer_id}</code>" in page
    row = page[:page.index(f"<code>{answer_id}</code>")]
    row = row[row.rindex("<tr>"):]
    assert f"{failed.value.status_code} " in row and "0.000000" in row
