"""The stateful Responses API (``store``, ``previous_response_id``, ``item_reference``, retrieve, delete,
input items) with the official ``openai`` SDK, against the strict OpenAI and Anthropic fakes: a turn
rebuilt wrongly (an orphan tool result, a thinking block without its signature) is the fake's 400."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from common.names import Names
from common.redis import connect
from tests import harness
from tests.fakes.anthropic_server import signature_of
from tests.harness import GatewayHarness, config_file, create_key, env_for, tokens_text, wait_until
from tests.redis_commands import grant_credits

GPT = "openai/gpt-4o-mini"
CLAUDE = "anthropic/claude-sonnet-4-5"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": False,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


class Stack:
    def __init__(self, gateway: GatewayHarness, env: dict[str, str], fakes: harness.Fakes, keys: list[str]) -> None:
        self.gateway, self.env, self.fakes, self.keys = gateway, env, fakes, keys

    def client(self, which: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key=self.keys[which], max_retries=0, timeout=20)

    def redis_call(self, name: str, *args: Any) -> Any:
        async def call() -> Any:
            redis = connect(self.env["REDIS_URL"])
            try:
                return await getattr(redis, name)(*args)
            finally:
                await redis.aclose()
        return asyncio.run(call())

    def stored_key(self, response_id: str) -> str:
        return Names(self.env["MEGABRAIN_NAMESPACE"]).stored_response(response_id)


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    fakes = harness.Fakes()
    config = config_file(tmp_path_factory.mktemp("stored"))
    with fakes.serving() as upstreams:
        env = env_for(redis_url, MEGABRAIN_CONFIG=config, MEGABRAIN_UPSTREAM_MAX_RETRIES="0", **upstreams)
        keys = [create_key(redis_url, env["MEGABRAIN_NAMESPACE"], name) for name in ("one", "two")]
        with GatewayHarness.from_env(env, pools=("openai", "anthropic")) as gateway:
            yield Stack(gateway, env, fakes, keys)


@pytest.fixture
def s(stack: Stack) -> Stack:
    stack.fakes.reset()
    return stack


def create(client: openai.OpenAI, stream: bool, **kwargs: Any) -> Any:
    if stream:
        with client.responses.stream(**kwargs) as events:
            return events.get_final_response()
    return client.responses.create(**kwargs)


def roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body.get("messages") or ()]


@pytest.mark.parametrize("stream", [False, True])
def test_three_turns_with_tools_and_thinking_across_providers(s: Stack, stream: bool) -> None:
    """Claude thinks and calls a tool; the next turn sends only the tool's output (the fake checks the
    thinking block's signature came back and the tool_result answers the tool_use); the third turn
    moves to an OpenAI model with the whole conversation."""
    client = s.client()
    s.fakes.anthropic.tool_call = {"id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
    first = create(client, stream, model=CLAUDE, input="Weather in Paris?", tools=TOOLS, max_output_tokens=2000,
                   reasoning={"effort": "low"}, instructions="Be brief.")
    assert first.store is True and first.previous_response_id is None
    assert first.output[0].type == "reasoning" and first.output[-1].type == "function_call"
    call = first.output[-1]

    s.fakes.anthropic.tool_call = None
    second = create(client, stream, model=CLAUDE, previous_response_id=first.id, tools=TOOLS,
                    max_output_tokens=2000, reasoning={"effort": "low"},
                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert second.previous_response_id == first.id and second.output_text == s.fakes.anthropic.reply
    sent = s.fakes.anthropic.requests[-1]["body"]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"][0] == {"type": "thinking", "thinking": s.fakes.anthropic.thinking,
                                                 "signature": signature_of(s.fakes.anthropic.thinking)}
    assert "Sunny, 21 C" in json.dumps(sent["messages"][2])

    third = create(client, stream, model=GPT, previous_response_id=second.id, input="Thanks! And Rome?",
                   tools=TOOLS)
    assert third.output_text == tokens_text(s.fakes.openai.tokens)
    body = s.fakes.openai.requests[-1]["body"]
    assert roles(body) == ["user", "assistant", "tool", "assistant", "user"]  # instructions are not carried
    assert body["messages"][0]["content"] == "Weather in Paris?"
    assert body["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert body["messages"][3]["content"] == s.fakes.anthropic.reply
    assert body["messages"][4]["content"] == "Thanks! And Rome?"
    assert client.responses.retrieve(third.id).output_text == third.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_item_references_resolve_to_stored_output(s: Stack, stream: bool) -> None:
    """The Vercel AI SDK's second turn: earlier output sent back as ``item_reference`` items."""
    client = s.client()
    first = create(client, stream, model=GPT, input="Hello")
    reference = {"type": "item_reference", "id": first.output[0].id}
    second = create(client, stream, model=GPT, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}, reference,
        {"role": "user", "content": [{"type": "input_text", "text": "Again"}]}])
    body = s.fakes.openai.requests[-1]["body"]
    assert roles(body) == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == first.output_text
    items = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "message", "message"]
    assert items.data[1].id == first.output[0].id
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=GPT, input=[{"type": "item_reference", "id": "msg_" + "0" * 24}])


def test_retrieve_input_items_and_delete(s: Stack) -> None:
    client = s.client()
    made = client.responses.create(model=GPT, input=[{"role": "user", "content": f"part {n}"} for n in range(5)])
    got = client.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    page = client.responses.input_items.list(made.id, limit=2)
    assert [item.content[0].text for item in page.data] == ["part 4", "part 3"] and page.has_more
    rest = client.responses.input_items.list(made.id, limit=10, after=page.last_id)
    assert [item.content[0].text for item in rest.data] == ["part 2", "part 1", "part 0"] and not rest.has_more
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=GPT, input="more", previous_response_id=made.id)


def test_another_keys_response_is_not_found(s: Stack) -> None:
    mine = s.client(0).responses.create(model=GPT, input="Hello")
    theirs = s.client(1)
    for attempt in (lambda: theirs.responses.retrieve(mine.id),
                    lambda: theirs.responses.delete(mine.id),
                    lambda: theirs.responses.input_items.list(mine.id),
                    lambda: theirs.responses.create(model=GPT, input="hi", previous_response_id=mine.id),
                    lambda: theirs.responses.create(model=GPT, input=[
                        {"type": "item_reference", "id": mine.output[0].id}])):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert s.client(0).responses.retrieve(mine.id).id == mine.id  # still there for its owner
    assert len(s.fakes.openai.requests) == 1  # nothing refused reached the upstream


def test_store_false_keeps_nothing(s: Stack) -> None:
    client = s.client()
    made = client.responses.create(model=GPT, input="Hello", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_retention_is_the_documented_default_then_404(s: Stack) -> None:
    client = s.client()
    made = client.responses.create(model=GPT, input="Hello")
    key = s.stored_key(made.id)
    assert 29 * 86400 < s.redis_call("ttl", key) <= 30 * 86400  # MEGABRAIN_RESPONSE_TTL's default
    s.redis_call("pexpire", key, 1)  # the retention window ends
    assert wait_until(lambda: not s.redis_call("exists", key), 5)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_a_stored_answer_stays_small(s: Stack) -> None:
    """What is kept is the answer and this turn's input, once: not the conversation again."""
    client = s.client()
    s.fakes.openai.tokens = 2000
    first = client.responses.create(model=GPT, input="x" * 50_000)
    second = client.responses.create(model=GPT, input="short", previous_response_id=first.id)
    size = len(s.redis_call("get", s.stored_key(second.id)))
    assert size < len(first.output_text) * 2 + 10_000  # its own answer, not the 50 kB before it


def test_a_response_larger_than_a_record_may_be_is_answered_not_stored(s: Stack,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = s.gateway.server.config.app.state.gateway.responses  # type: ignore[union-attr]
    assert store.max_bytes == 4 * 1024 * 1024  # MEGABRAIN_RESPONSE_MAX_BYTES' default
    monkeypatch.setattr(store, "max_bytes", 20_000)
    client = s.client()
    big_input = client.responses.create(model=GPT, input="x" * 30_000)
    assert big_input.store is False and big_input.output_text == tokens_text(s.fakes.openai.tokens)
    s.fakes.openai.tokens = 4000  # a small request, an answer past the bound: answered whole, not stored
    big_answer = client.responses.create(model=GPT, input="Hello")
    assert big_answer.store is True and big_answer.output_text == tokens_text(4000)
    for made in (big_input, big_answer):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)
    s.fakes.openai.tokens = 16
    small = client.responses.create(model=GPT, input="Hi")
    assert client.responses.retrieve(small.id).id == small.id


def test_keys_of_one_account_share_its_responses(s: Stack) -> None:
    """A signed-in user's keys (one account) read and continue each other's responses; another account's
    key, like any other, gets 404."""
    ns = s.env["MEGABRAIN_NAMESPACE"]
    laptop, desktop, stranger = (create_key(s.env["REDIS_URL"], ns, name, owner=account)
                                 for name, account in (("laptop", "acct-a"), ("desktop", "acct-a"),
                                                       ("other", "acct-b")))
    for account in ("acct-a", "acct-b"):  # an account's keys spend its prepaid credits (README, Credits)
        grant_credits(s.env["REDIS_URL"], ns, account, "1")

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=s.gateway.url + "/v1", api_key=key, max_retries=0, timeout=20)

    made = client(laptop).responses.create(model=GPT, input="Hello")
    assert client(desktop).responses.retrieve(made.id).id == made.id
    follow_up = client(desktop).responses.create(model=GPT, input="More", previous_response_id=made.id)
    assert follow_up.previous_response_id == made.id
    with pytest.raises(openai.NotFoundError):
        client(stranger).responses.retrieve(made.id)
