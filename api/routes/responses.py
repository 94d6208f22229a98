"""The OpenAI Responses API, for Codex CLI, the Vercel AI SDK and the newer OpenAI agent code, in front of
every provider: ``POST /responses``, and for stored responses ``GET``/``DELETE /responses/{id}`` and
``GET /responses/{id}/input_items``.

A request is decoded into the canonical body (``api/formats/openai_responses.py``) and served exactly
like a chat completion: same plan, limits, accounting, headers, metrics and logs. Before that, the
stateful parts are resolved here from the stored responses (``api/exchange/stored.py``):
``previous_response_id`` puts the stored conversation before the new input, ``item_reference`` items
become the items they name. The answer is stored (``store``, default true as OpenAI's) when the caller
has a key to own it; a keyless caller's ``store`` is false.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.access.check import Caller
from api.exchange import background
from api.exchange.body import read_json
from api.exchange.answer import SSE_HEADERS
from api.exchange.dispatch import Dispatch, replay_response
from api.exchange.stored import Owner, ResponseStore, StoredResponse, with_ids
from api.formats.openai_responses import OPENAI_RESPONSES, OpenAIResponses, ResponsesRequest, canonical_request
from api.gateway import Gateway
from api.routes.admin import presented_key
from common.errors import GatewayError, invalid, unavailable
from common.wire import Route
from router.plan import plan_for

log = logging.getLogger("megabrain.responses")
INPUT_ITEMS_LIMIT = 20  # OpenAI's default page; at most 100
CANCEL_WAIT = 10.0  # seconds a cancel waits for the follower to stop the answer


def owner_of(caller: Caller) -> Owner | None:
    record = caller.record
    return Owner(record.id, record.owner) if record is not None else None


async def with_history(store: ResponseStore, parsed: ResponsesRequest, owner: Owner | None,
                       base: str) -> tuple[ResponsesRequest, list[str], list[dict[str, Any]]]:
    """(the request with the whole conversation as its input, the response's chain, this turn's input
    items with ids and references resolved)."""
    items = ([{"type": "message", "role": "user", "content": parsed.input}] if isinstance(parsed.input, str)
             else parsed.input)
    try:
        turn = with_ids(await store.resolve_references(items, owner), base)
        chain: list[str] = []
        history: list[dict[str, Any]] = []
        if parsed.previous_response_id:
            chain, history = await store.conversation(parsed.previous_response_id, owner)
    except RedisError:
        raise unavailable("The gateway cannot reach its store (Redis) right now.", retry_after=2) from None
    return msgspec.structs.replace(parsed, input=[*history, *turn]), chain, turn


async def keep(store: ResponseStore, fmt: OpenAIResponses, record: StoredResponse) -> None:
    """Store the answer's Response object (only an answer that ended well has one)."""
    if fmt.final is not None:
        record.response = msgspec.Raw(msgspec.json.encode(fmt.final))
        if not await store.save(record, update=bool(record.follower)):  # (a background one's exists already)
            log.warning("response %s: larger than MEGABRAIN_RESPONSE_MAX_BYTES, not stored", record.id)


async def create_response(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "responses", OPENAI_RESPONSES)
    try:
        owner = owner_of(await dispatch.identify())  # who calls, before the body is read or planned
        body, parsed = await read_json(request, ResponsesRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = parsed.model
        whole, chain, turn = await with_history(gateway.responses, parsed, owner, dispatch.request_id)
        # a request larger than a stored response may be is answered, not stored (its echo says so)
        stored = parsed.store is not False and owner is not None and len(body) <= gateway.responses.max_bytes
        fmt = OpenAIResponses.for_request(parsed, stored)  # its answers restate the request's settings
        dispatch.format = fmt
        canonical = canonical_request(whole)
        plan = plan_for(gateway.catalog, parsed.model, health=gateway.health, messages=canonical["messages"],
                        tools=canonical.get("tools"), output_tokens=parsed.max_output_tokens)
        await dispatch.admit(plan, messages=canonical["messages"], tools=canonical.get("tools"),
                             request=canonical, with_enqueue=True)
        if parsed.background and not stored:
            raise invalid("background needs store (the default), an API key and a request within "
                          "MEGABRAIN_RESPONSE_MAX_BYTES: a background answer is read back as a stored response.",
                          param="background")
    except GatewayError as error:
        return await dispatch.refuse(error)
    record = None
    if stored and owner is not None:
        record = StoredResponse(id=f"resp_{dispatch.request_id}", key_id=owner.key_id, account=owner.account,
                                chain=chain, input=turn)
        dispatch.exchange.keep = functools.partial(keep, gateway.responses, fmt, record)
    if parsed.background and record is not None:
        return await in_background(dispatch, fmt, record, plan, canonical, bool(parsed.stream), parsed.model)
    stream = bool(parsed.stream)
    job = dispatch.job("chat", plan, body=msgspec.json.encode(canonical), stream=stream, include_usage=stream)
    return await dispatch.answer(job)


async def in_background(dispatch: Dispatch, fmt: OpenAIResponses, record: StoredResponse, plan: list[Route],
                        canonical: dict[str, Any], stream: bool, model: str) -> Response:
    """Enqueue the answer (a refusal is still this request's 4xx/503), store it as ``queued`` and follow it
    on its own (``Dispatch.detach``); answer with the queued object, or stream the events."""
    store = dispatch.gateway.responses
    job = dispatch.job("chat", plan, body=msgspec.json.encode({**canonical, "stream": True,
                                                               "stream_options": {"include_usage": True}}),
                       stream=True, include_usage=True)

    async def placeholder(status: str) -> None:
        record.response = msgspec.Raw(msgspec.json.encode(fmt.placeholder(dispatch.request_id, model, status)))
        await store.save(record, update=status != "queued")  # queued: the first write, which creates it

    record.follower = dispatch.gateway.relay.channel
    record.kept = True  # its worker keeps the chat frames; any web process rebuilds the Responses events
    refused = await dispatch.detach(job, before=functools.partial(placeholder, "queued"),
                                    on_start=functools.partial(placeholder, "in_progress"),
                                    on_cancel=functools.partial(placeholder, "cancelled"), rebuilt=True)
    if refused is not None:
        return refused
    if stream:
        return _rebuilt_stream(dispatch.gateway, record, -1, dispatch.headers)
    return Response(bytes(record.response), media_type="application/json", headers=dispatch.headers)


# ------------------------------------------------------------------------------------- stored responses


def _json(payload: Any) -> Response:
    return Response(payload if isinstance(payload, bytes) else msgspec.json.encode(payload),
                    media_type="application/json")


async def _stored(request: Request, what: str) -> tuple[ResponseStore, StoredResponse, Owner]:
    record_key = await presented_key(request, what)
    gateway: Gateway = request.app.state.gateway
    owner = Owner(record_key.id, record_key.owner)
    try:
        return gateway.responses, await gateway.responses.get(request.path_params["response_id"], owner), owner
    except RedisError:
        raise unavailable("The gateway cannot reach its store (Redis) right now.", retry_after=2) from None


def _rebuilt_stream(gateway: Gateway, record: StoredResponse, after: int, headers: dict[str, str]) -> Response:
    """A background answer's Responses events after ``after``, rebuilt from the chat events its worker keeps."""
    request_id = record.id.removeprefix("resp_")
    fmt = OpenAIResponses.of_stored(msgspec.json.decode(record.response))
    deadline = time.time() + gateway.settings.request_timeout + 60
    return StreamingResponse(background.rebuilt(gateway.response_events, request_id, after, deadline, fmt.stream()),
                             media_type="text/event-stream",
                             headers={**SSE_HEADERS, **headers, "x-megabrain-answer-id": request_id})


async def _rebuilt(gateway: Gateway, record: StoredResponse) -> StoredResponse:
    """A pending background answer whose worker keeps its events, as they say it is: ended (its worker's
    final event kept: ``completed``, or ``failed``), stored so, whichever web process reads it first."""
    fmt = OpenAIResponses.of_stored(msgspec.json.decode(record.response))
    if await background.rebuilt_final(gateway.response_events, record.id.removeprefix("resp_"), fmt.stream()) \
            and fmt.final is not None:
        record.response = msgspec.Raw(msgspec.json.encode(fmt.final))
        await gateway.responses.save(record, update=True)
    return record


async def _unfollowed(gateway: Gateway, record: StoredResponse) -> StoredResponse:
    """A background answer still pending whose web process is gone (killed: it wrote no end) is ``failed``,
    and stored so; unless its worker keeps its events (``kept``): then they say how it is."""
    if not record.follower or record.status() not in ("queued", "in_progress"):
        return record
    if record.kept:
        return await _rebuilt(gateway, record)
    if await background.followed(gateway.reply_redises, record.follower):
        return record
    response = msgspec.json.decode(record.response)
    response.update(status="failed", error={"code": "answer_lost", "message": background.LOST_MESSAGE})
    record.response = msgspec.Raw(msgspec.json.encode(response))
    await gateway.responses.save(record, update=True)
    return record


async def get_response(request: Request) -> Response:
    """The stored Response object, as the client got it; with ``stream=true``, a background answer's
    events after ``starting_after`` (default: all), live until its end."""
    _, record, _ = await _stored(request, "to read a stored response")
    if request.query_params.get("stream") not in ("true", "1"):
        return _json(bytes((await _unfollowed(request.app.state.gateway, record)).response))
    raw = request.query_params.get("starting_after") or "-1"
    if not raw.lstrip("-").isdigit() or int(raw) < -1:
        raise invalid("starting_after must be an event's sequence_number (0 or more).", param="starting_after")
    if not record.follower:
        raise invalid("Only a background response (background: true) can be streamed again.", param="stream")
    if record.kept:
        return _rebuilt_stream(request.app.state.gateway, record, int(raw), {})
    return replay_response(request.app.state.gateway, record.id.removeprefix("resp_"), int(raw), {},
                           follower=record.follower)


async def cancel_response(request: Request) -> Response:
    """Stop a background answer (a queued one is withdrawn, a running one's upstream call stopped, as when a
    client leaves; not billed unless it had settled first). The Response object after it: ``cancelled``,
    or what the answer came to, if it ended first."""
    store, record, owner = await _stored(request, "to cancel a response")
    if not record.follower:
        raise invalid("Only a background response (background: true) can be cancelled.", param="response_id")
    gateway: Gateway = request.app.state.gateway
    if record.status() in ("queued", "in_progress"):
        await background.cancel(gateway.reply_redises, record.follower, record.id.removeprefix("resp_"))
        deadline = time.time() + CANCEL_WAIT
        followed = functools.partial(background.followed, gateway.reply_redises, record.follower)
        async for _ in background.replay(gateway.response_events, record.id.removeprefix("resp_"), -1, deadline,
                                         followed=followed):
            pass  # until the follower closed its events (it stores the outcome first)
        record = await _unfollowed(gateway, await store.get(record.id, owner))
    return _json(bytes(record.response))


async def delete_response(request: Request) -> Response:
    store, record, owner = await _stored(request, "to delete a stored response")
    await store.delete(record.id, owner)
    return _json({"id": record.id, "object": "response", "deleted": True})


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit") or str(INPUT_ITEMS_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise invalid("limit must be an integer from 1 to 100.", param="limit")
    return int(raw)


async def input_items(request: Request) -> Response:
    """This turn's input items (references resolved), paginated as OpenAI's: ``limit`` (default 20),
    ``order`` (``desc``, the default, or ``asc``), ``after`` (an item id)."""
    _, record, _ = await _stored(request, "to read a stored response")
    order = request.query_params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid("order must be 'asc' or 'desc'.", param="order")
    limit = _limit(request)
    items = record.input if order == "asc" else record.input[::-1]
    after = request.query_params.get("after")
    if after:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise invalid(f"No input item {after!r} in this response.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


ROUTES = [
    ("POST", "/responses", create_response),
    ("GET", "/responses/{response_id}", get_response),
    ("DELETE", "/responses/{response_id}", delete_response),
    ("POST", "/responses/{response_id}/cancel", cancel_response),
    ("GET", "/responses/{response_id}/input_items", input_items),
]
