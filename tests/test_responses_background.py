"""Background answers (``background: true``) and resumed streams (``GET /v1/responses/{id}?stream=true&
starting_after=N``) with the official ``openai`` SDK: the answer runs with nobody connected, its events are
kept, and any web process serves the rest of them, once each and in order; cancel stops it unbilled."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests import responses_grammar
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, auth, create_key, env_for, tokens_text, wait_until

GPT = "openai/gpt-4o-mini"


class Stack:
    def __init__(self, web: GatewayHarness, other_web: GatewayHarness, fake: OpenAIFakeState, keys: list[str]) -> None:
        self.web, self.other_web, self.fake, self.keys = web, other_web, fake, keys

    def client(self, which: int = 0, web: GatewayHarness | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=(web or self.web).url + "/v1", api_key=self.keys[which], max_retries=0,
                             timeout=20)


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    fake = OpenAIFakeState()
    with ThreadedServer(create_openai_app(fake)) as upstream:
        env = env_for(redis_url, OPENAI_BASE_URL=upstream.url + "/v1", OPENAI_API_KEY="sk-upstream-test")
        keys = [create_key(redis_url, env["MEGABRAIN_NAMESPACE"], name) for name in ("one", "two")]
        with GatewayHarness.from_env(env) as web, GatewayHarness.from_env(env, pools=()) as other_web:
            yield Stack(web, other_web, fake, keys)


@pytest.fixture
def s(stack: Stack) -> Iterator[Stack]:
    stack.fake.reset()
    yield stack
    stack.fake.hold_answers = False


def events_of(stream: Any) -> list[dict[str, Any]]:
    return [event.model_dump(exclude_none=True) for event in stream]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def generation(s: Stack, response_id: str) -> int:
    return httpx.get(s.web.url + "/api/v1/generation", params={"id": response_id.removeprefix("resp_")},
                     headers=auth(s.keys[0])).status_code


def test_background_then_poll_then_resume_exactly_the_missing_events(s: Stack) -> None:
    client = s.client()
    s.fake.hold_answers = True
    made = client.responses.create(model=GPT, input="Hello", background=True)
    assert made.status == "queued" and made.background is True and made.output == []
    assert wait_until(lambda: len(s.fake.requests) == 1, 10)  # the worker is at the upstream, nobody listening
    assert client.responses.retrieve(made.id).status in ("queued", "in_progress")
    s.fake.hold_answers = False
    whole = events_of(client.responses.retrieve(made.id, stream=True))
    responses_grammar.check(whole)
    assert whole[-1]["type"] == "response.completed" and text_of(whole) == tokens_text(s.fake.tokens)
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
    done = client.responses.retrieve(made.id)
    assert done.status == "completed" and done.output_text == tokens_text(s.fake.tokens)
    for n in (0, 5, len(whole) - 2):
        assert events_of(client.responses.retrieve(made.id, stream=True, starting_after=n)) == whole[n + 1:]
    assert generation(s, made.id) == 200  # billed, once: its one generation record
    assert len(s.fake.requests) == 1  # the resumes cost nothing upstream


def test_cut_stream_resumed_through_another_web_process(s: Stack) -> None:
    s.fake.tokens = 40
    first: list[dict[str, Any]] = []
    with httpx.stream("POST", s.web.url + "/v1/responses", headers=auth(s.keys[0]), timeout=20,
                      json={"model": GPT, "input": "Hello", "background": True, "stream": True}) as response:
        assert response.status_code == 200
        ids = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            if line.startswith("data: "):
                first.append(json.loads(line[6:]))
                if len(first) == 12:
                    break  # the client's connection drops here
    assert ids == [e["sequence_number"] for e in first]
    response_id = first[0]["response"]["id"]
    rest = events_of(s.client(web=s.other_web).responses.retrieve(response_id, stream=True, starting_after=11))
    assert rest[0]["sequence_number"] == 12
    whole = first + [e for e in rest]
    responses_grammar.check([json.loads(json.dumps(e)) for e in whole])
    assert text_of(whole) == tokens_text(40)  # byte for byte, no gap, no duplicate


def test_cancel_stops_a_background_answer_unbilled(s: Stack) -> None:
    client = s.client()
    s.fake.hold_answers = True
    made = client.responses.create(model=GPT, input="Hello", background=True)
    assert wait_until(lambda: len(s.fake.requests) == 1, 10)
    cancelled = s.client(web=s.other_web).responses.cancel(made.id)  # from another web process
    assert cancelled.status == "cancelled"
    s.fake.hold_answers = False
    assert client.responses.retrieve(made.id).status == "cancelled"
    assert generation(s, made.id) == 404  # nothing billed
    assert [e for e in events_of(client.responses.retrieve(made.id, stream=True))
            if e["type"] == "response.completed"] == []


def test_background_is_the_owners_only(s: Stack) -> None:
    made = s.client().responses.create(model=GPT, input="Hello", background=True)
    theirs = s.client(1)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(made.id)
    with pytest.raises(openai.NotFoundError):
        list(theirs.responses.retrieve(made.id, stream=True))
    events = events_of(s.client().responses.retrieve(made.id, stream=True))
    assert events[-1]["type"] == "response.completed"


def test_background_refusals(s: Stack) -> None:
    client = s.client()
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=GPT, input="Hello", background=True, store=False)
    made = client.responses.create(model=GPT, input="Hello")  # not background: nothing to resume or cancel
    with pytest.raises(openai.BadRequestError):
        list(client.responses.retrieve(made.id, stream=True))
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(made.id)


def test_a_stream_opened_while_queued_waits_for_the_answer(s: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """No event kept yet (the answer is queued): the reader waits, across its blocking reads, instead of
    ending the stream."""
    from api.exchange import background

    reads = []
    read = background.EventLog.read

    async def counted(self: background.EventLog, response_id: str, after: int) -> Any:
        reads.append(response_id)
        return await read(self, response_id, after)

    monkeypatch.setattr(background, "READ_BLOCK_MS", 20)
    monkeypatch.setattr(background.EventLog, "read", counted)
    client = s.client()
    s.fake.hold_answers = True
    made = client.responses.create(model=GPT, input="Hello", background=True)
    got: list[list[dict[str, Any]]] = []
    import threading
    reader = threading.Thread(target=lambda: got.append(events_of(client.responses.retrieve(made.id, stream=True))))
    reader.start()
    assert wait_until(lambda: len(reads) >= 3, 10)  # several reads found nothing, the stream still open
    s.fake.hold_answers = False
    reader.join(20)
    assert got and got[0][-1]["type"] == "response.completed" and text_of(got[0]) == tokens_text(s.fake.tokens)
