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

from tests import agent_clients, responses_grammar
from tests.fakes.openai_server import OpenAIFakeState, create_openai_app
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, ProcessGateway, auth, create_key, env_for, tokens_text, wait_until

GPT = "openai/gpt-4o-mini"


class Stack:
    def __init__(self, web: GatewayHarness, other_web: GatewayHarness, fake: OpenAIFakeState, keys: list[str],
                 env: dict[str, str]) -> None:
        self.web, self.other_web, self.fake, self.keys, self.env = web, other_web, fake, keys, env

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
            yield Stack(web, other_web, fake, keys, env)


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


def test_node_sdk_conversation_background_and_resume(s: Stack) -> None:
    """The OpenAI Node SDK over the stateful API: previous_response_id (streamed and not), retrieve,
    inputItems, a background answer resumed with starting_after, delete then 404."""
    payload = {"baseURL": s.web.url + "/v1", "apiKey": s.keys[0], "model": GPT}
    done = agent_clients.run_node("openai_responses_chain.cjs", json.dumps(payload), package="openai")
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-2000:])
    first, second, third = result["turns"]
    assert second["previous"] == first["id"] and third["previous"] == second["id"]
    assert {t["text"] for t in result["turns"]} == {tokens_text(s.fake.tokens)}
    sent = [m["role"] for m in s.fake.requests[2]["body"]["messages"]]
    assert sent == ["user", "assistant", "user", "assistant", "user"]  # turn three: the whole conversation
    assert result["retrieved"] == {"id": third["id"], "text": tokens_text(s.fake.tokens)}
    assert [i["content"][0]["text"] for i in result["items"]] == ["Thanks."]
    assert result["queued"] == "queued"
    assert result["resumed"][0]["seq"] == 3 and result["resumed"][-1]["type"] == "response.completed"
    assert [e["seq"] for e in result["resumed"]] == list(range(3, 3 + len(result["resumed"])))
    assert result["deletedThen"] == 404


def _redis(s: Stack, name: str, *args: Any) -> Any:
    gateway = s.web.server.config.app.state.gateway  # type: ignore[union-attr]
    return s.web.run(getattr(gateway.redis, name)(*args))


def test_kept_events_are_bounded_per_answer(s: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the cap nothing more is kept: a resume ends with events_not_kept, the stored answer is whole."""
    gateway = s.web.server.config.app.state.gateway  # type: ignore[union-attr]
    assert gateway.response_events.max_bytes == 8 * 1024 * 1024  # MEGABRAIN_RESPONSE_EVENTS_MAX_BYTES' default
    monkeypatch.setattr(gateway.response_events, "max_bytes", 20_000)
    s.fake.tokens = 2000  # about 12 kB of text, about 400 kB of Responses events
    client = s.client()
    made = client.responses.create(model=GPT, input="Hello", background=True)
    with pytest.raises(openai.APIError) as cut:
        events_of(client.responses.retrieve(made.id, stream=True))
    assert "events_not_kept" in str(cut.value.body) or "outgrew" in str(cut.value)
    key = gateway.names.answer_events(made.id.removeprefix("resp_"))
    assert _redis(s, "memory_usage", key) < 40_000  # the cap, plus the stream's own bookkeeping
    assert wait_until(lambda: client.responses.retrieve(made.id).status == "completed", 10)
    assert client.responses.retrieve(made.id).output_text == tokens_text(2000)


def test_kept_events_expire_then_404(s: Stack) -> None:
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with httpx.stream("POST", s.web.url + "/v1/chat/completions", json=body, timeout=20,
                      headers={**auth(s.keys[0]), "x-megabrain-resumable": "true"}) as response:
        answer_id = response.headers["x-megabrain-answer-id"]
        response.read()
    gateway = s.web.server.config.app.state.gateway  # type: ignore[union-attr]
    keys = [gateway.names.answer_events(answer_id), gateway.names.answer_owner(answer_id)]
    assert all(3500 < _redis(s, "ttl", key) <= 3600 for key in keys)  # MEGABRAIN_RESPONSE_EVENTS_TTL's default
    for key in keys:
        _redis(s, "pexpire", key, 1)  # the retention window ends
    assert wait_until(lambda: not _redis(s, "exists", *keys), 5)
    assert httpx.get(f"{s.web.url}/v1/streams/{answer_id}", headers=auth(s.keys[0]), timeout=20).status_code == 404


def test_a_background_response_survives_the_web_process_that_admitted_it(s: Stack) -> None:
    """Two ``megabrain web`` processes and a worker on one store: a background Response admitted by web A,
    web A SIGKILLed mid-answer (a deploy that loses the dyno). Its worker keeps the chat events itself
    (``workers/keeper.py``) and finishes; web B rebuilds the Responses events from them: ``retrieve``
    reads ``completed`` with the whole text, a resumed stream gets exactly the missing events; billed once."""
    s.fake.tokens, s.fake.token_delay = 400, 0.01
    key = create_key(s.env["REDIS_URL"], s.env["MEGABRAIN_NAMESPACE"], "background-survivor")
    with ProcessGateway(s.env) as doomed:
        client = openai.OpenAI(base_url=doomed.url + "/v1", api_key=key, max_retries=0, timeout=20)
        background = client.responses.create(model=GPT, input="Hello", background=True)
        with client.responses.retrieve(background.id, stream=True) as stream:
            first = []
            for event in stream:
                first.append(event.model_dump(exclude_none=True))
                if len(first) == 8:
                    break
        assert doomed.web is not None
        doomed.web.kill()  # SIGKILL mid-answer: no shutdown, nothing written at the end
        doomed.web.wait(10)
    other = openai.OpenAI(base_url=s.other_web.url + "/v1", api_key=key, max_retries=0, timeout=30)
    assert wait_until(lambda: other.responses.retrieve(background.id).status == "completed", 20)
    done = other.responses.retrieve(background.id)
    assert done.output_text == tokens_text(400) and done.usage is not None and done.usage.output_tokens > 0
    rest = events_of(other.responses.retrieve(background.id, stream=True, starting_after=7))
    events = first + rest
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # no gap, no duplicate
    responses_grammar.check(events)
    assert text_of(events) == tokens_text(400) and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["id"] == background.id == events[0]["response"]["id"]
    assert events[-1]["response"]["created_at"] == background.created_at  # rebuilt, not re-stamped
    assert events[-1]["response"]["output"] == done.model_dump(exclude_none=True)["output"]
    assert len(s.fake.requests) == 1 and s.fake.streams_closed_early == 0  # the upstream call ran to its end
    assert httpx.get(s.other_web.url + "/api/v1/generation", params={"id": background.id.removeprefix("resp_")},
                     headers=auth(key), timeout=10).status_code == 200
    usage = httpx.get(s.other_web.url + "/v1/usage", headers=auth(key), timeout=10).json()
    assert [row["requests"] for row in usage["data"]] == [1]  # billed exactly once


@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_a_resumable_chat_stream_survives_its_web_process(s: Stack, stop: str) -> None:
    """Two ``megabrain web`` processes and a worker on one store: a resumable chat stream admitted by web A,
    web A SIGKILLed mid-stream (or stopped, as a deploy does: SIGTERM once its client left); the worker
    keeps the events itself (``workers/keeper.py``) and finishes; the client resumes through web B and gets
    the whole answer, byte for byte, billed exactly once."""
    s.fake.tokens, s.fake.token_delay = 400, 0.01
    key = create_key(s.env["REDIS_URL"], s.env["MEGABRAIN_NAMESPACE"], "survivor")
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "Hello"}],
            "stream_options": {"include_usage": True}}
    with ProcessGateway(s.env) as doomed:
        with httpx.stream("POST", doomed.url + "/v1/chat/completions", json=body, timeout=20,
                          headers={**auth(key), "x-megabrain-resumable": "true"}) as response:
            assert response.status_code == 200
            answer_id = response.headers["x-megabrain-answer-id"]
            first: list[str] = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    first.append(line)
                    if len(first) == 5:
                        break
            assert doomed.web is not None
            if stop == "kill":
                doomed.web.kill()  # SIGKILL mid-stream: no shutdown, nothing written at the end
                doomed.web.wait(10)
        if stop == "terminate":
            doomed.web.terminate()  # a deploy: the web process stops its followers and exits
            doomed.web.wait(20)
        with httpx.stream("GET", f"{s.other_web.url}/v1/streams/{answer_id}", timeout=30,
                          headers={**auth(key), "last-event-id": "4"}) as resumed:
            assert resumed.status_code == 200
            lines = list(resumed.iter_lines())
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    rest = [line for line in lines if line.startswith("data: ")]
    assert ids == list(range(5, 5 + len(rest)))  # no gap, no duplicate
    assert rest[-1] == "data: [DONE]"
    text = "".join((choice.get("delta") or {}).get("content") or ""
                   for line in first + rest[:-1] for choice in json.loads(line[6:]).get("choices") or ())
    assert text == tokens_text(400)  # byte for byte: the uninterrupted answer
    assert len(s.fake.requests) == 1 and s.fake.streams_closed_early == 0  # the upstream call ran to its end
    assert httpx.get(s.other_web.url + "/api/v1/generation", params={"id": answer_id},
                     headers=auth(key), timeout=10).status_code == 200
    usage = httpx.get(s.other_web.url + "/v1/usage", headers=auth(key), timeout=10).json()
    assert [row["requests"] for row in usage["data"]] == [1]  # billed exactly once


def test_a_resumable_messages_stream_survives_its_web_process(s: Stack) -> None:
    """The same for a resumable Messages stream (its events re-encoded from canonical chunks): web A
    SIGKILLed mid-stream, the worker keeps the chat events, web B rebuilds the Messages events from them;
    the rest follows the last id seen with no gap, the text whole, billed once."""
    s.fake.tokens, s.fake.token_delay = 400, 0.01
    key = create_key(s.env["REDIS_URL"], s.env["MEGABRAIN_NAMESPACE"], "messages-survivor")
    body = {"model": GPT, "stream": True, "max_tokens": 1000, "messages": [{"role": "user", "content": "Hello"}]}
    with ProcessGateway(s.env) as doomed:
        with httpx.stream("POST", doomed.url + "/v1/messages", json=body, timeout=20,
                          headers={**auth(key), "x-megabrain-resumable": "true"}) as response:
            assert response.status_code == 200
            answer_id = response.headers["x-megabrain-answer-id"]
            first: list[tuple[int, str]] = []
            seen = None
            for line in response.iter_lines():
                if line.startswith("id: "):
                    seen = int(line[4:])
                elif line.startswith("data: ") and seen is not None:
                    first.append((seen, line[6:]))
                    if len(first) == 8:
                        break
            assert doomed.web is not None
            doomed.web.kill()  # SIGKILL mid-stream: no shutdown, nothing written at the end
            doomed.web.wait(10)
    with httpx.stream("GET", f"{s.other_web.url}/v1/streams/{answer_id}", timeout=30,
                      headers={**auth(key), "last-event-id": str(first[-1][0])}) as resumed:
        assert resumed.status_code == 200
        rest: list[tuple[int, str]] = []
        seen = None
        for line in resumed.iter_lines():
            if line.startswith("id: "):
                seen = int(line[4:])
            elif line.startswith("data: ") and seen is not None:
                rest.append((seen, line[6:]))
    events = first + rest
    assert [n for n, _ in events] == list(range(len(events)))  # no gap, no duplicate
    data = [json.loads(d) for _, d in events]
    assert data[0]["type"] == "message_start" and data[-1]["type"] == "message_stop"
    assert "".join(d["delta"].get("text", "") for d in data if d["type"] == "content_block_delta") == tokens_text(400)
    assert len(s.fake.requests) == 1 and s.fake.streams_closed_early == 0
    usage = httpx.get(s.other_web.url + "/v1/usage", headers=auth(key), timeout=10).json()
    assert [row["requests"] for row in usage["data"]] == [1]  # billed exactly once


@pytest.mark.compat(client="Vercel AI SDK", npm="@ai-sdk/openai", protocol="OpenAI Responses", family="OpenAI chat")
def test_vercel_ai_sdk_multi_turn_chat_with_item_references(s: Stack) -> None:
    """The Vercel AI SDK's OpenAI provider sends earlier output back as ``item_reference`` items from its
    second turn (it got a 400 there before stored responses); three turns, the last streamed."""
    payload = {"baseURL": s.web.url + "/v1", "apiKey": s.keys[0], "model": GPT}
    agent_clients.require_node_package("@ai-sdk/openai")
    done = agent_clients.run_node("vercel_ai_chat.cjs", json.dumps(payload), package="ai")
    result = json.loads(done.stdout or "{}")
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-2000:])
    assert result["texts"] == [tokens_text(s.fake.tokens)] * 3
    assert "item_reference" in result["sent"][1] and "item_reference" in result["sent"][2]
    sent = [m["role"] for m in s.fake.requests[-1]["body"]["messages"]]
    assert sent == ["user", "assistant", "user", "assistant", "user"]  # the references, resolved
    assert s.fake.requests[-1]["body"]["messages"][1]["content"] == tokens_text(s.fake.tokens)


def test_a_background_response_deleted_while_running_stays_deleted(s: Stack) -> None:
    client = s.client()
    s.fake.hold_answers = True
    made = client.responses.create(model=GPT, input="Hello", background=True)
    assert wait_until(lambda: len(s.fake.requests) == 1, 10)
    client.responses.delete(made.id)
    s.fake.hold_answers = False
    gateway = s.web.server.config.app.state.gateway  # type: ignore[union-attr]
    events = gateway.names.answer_events(made.id.removeprefix("resp_"))
    assert wait_until(lambda: 0 < _redis(s, "ttl", events) <= 3600, 10)  # ended: its events' last TTL is set
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)  # the answer's end did not bring it back
