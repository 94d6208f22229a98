"""``GET /streams/{answer id}``: the rest of a resumable stream (chat completions, Messages), from any web
process.

A stream asked for with ``x-megabrain-resumable: true`` (and a key) is detached (``Dispatch.detach``):
its answer runs whether or not its client stays, and each of its SSE events is kept with an ``id:``. A
client that lost it reconnects here with the answer's id (the ``chatcmpl-…``/``msg_…`` id in its chunks,
or the ``x-megabrain-answer-id`` header) and ``Last-Event-ID`` (or ``?starting_after=N``): it gets the
events after that one, stored then live, once each and in order. Only the key that made the request, or
a key of its account, may read it; anyone else gets 404, as for an unknown or expired id.
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.exchange.dispatch import replay_response
from api.exchange.stored import Owner
from api.formats.anthropic_messages import AnthropicMessages
from api.gateway import Gateway
from api.routes.admin import presented_key
from common.errors import GatewayError, invalid, unavailable

_ANSWER_ID = re.compile(r"^(?:chatcmpl-|msg_|resp_|gen-)?([0-9a-f]{24})$")


def _after(request: Request) -> int:
    raw = request.query_params.get("starting_after") or request.headers.get("last-event-id") or "-1"
    if not raw.lstrip("-").isdigit() or int(raw) < -1:
        raise invalid("starting_after (or Last-Event-ID) must be an event's id: 0 or more.", param="starting_after")
    return int(raw)


async def resume_stream(request: Request) -> Response:
    record_key = await presented_key(request, "to resume a stream")
    gateway: Gateway = request.app.state.gateway
    answer_id = request.path_params["answer_id"]
    match = _ANSWER_ID.match(answer_id)
    after = _after(request)
    try:
        owner = await gateway.response_events.owner(match.group(1)) if match else None
    except RedisError:
        raise unavailable("The gateway cannot reach its store (Redis) right now.", retry_after=2) from None
    if owner is None or not Owner(record_key.id, record_key.owner).may_read(owner):
        raise GatewayError("not_found", f"There is no resumable stream {answer_id!r} for this key (a stream "
                           "is resumable when asked with x-megabrain-resumable: true; its events are kept "
                           "MEGABRAIN_RESPONSE_EVENTS_TTL).", param="answer_id")
    assert owner is not None and match is not None
    # an answer its worker keeps outlives its follower; another ends when its follower is gone
    stream = AnthropicMessages(owner.model or None).stream() if owner.rebuild == "messages" else None
    return replay_response(gateway, match.group(1), after, {}, owner.keepalive.encode(),
                           "" if owner.worker_keeps else owner.follower, stream=stream)


ROUTES = [("GET", "/streams/{answer_id}", resume_stream)]
