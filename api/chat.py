"""``POST /chat/completions``: validate, plan, enqueue, and answer from the request's events."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from api.admission import admit
from api.body import read_json
from api.exchange import Exchange
from api.gateway import Gateway
from api.responses import error_response, json_response, stream_response
from common.errors import GatewayError, unavailable
from api.ids import client_request_id
from common.names import new_request_id
from common.wire import ChatRequest, Job, Route
from router.plan import plan_for


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    request_id = new_request_id()
    headers = {"x-request-id": client_request_id(request) or request_id}
    try:
        body, chat = await read_json(request, ChatRequest, gateway.settings.limits.max_body_bytes)
        plan = plan_for(gateway.catalog, chat.model, extra_models=chat.models, healthy=gateway.health.healthy)
        admission = await admit(gateway, request, model_is_free=plan_is_free(gateway, plan))
        headers.update(admission.headers)
        if not gateway.relay.ready.is_set():
            raise unavailable("The gateway cannot reach its queue (Redis) right now.", retry_after=2)
    except GatewayError as error:
        return error_response(error, headers)
    stream = bool(chat.stream)
    job = Job(
        kind="chat",
        request_id=request_id,
        reply_channel=gateway.relay.channel,
        attempt=0,
        plan=plan,
        deadline=time.time() + gateway.settings.request_timeout,
        stream=stream,
        include_usage=bool(stream and chat.stream_options and chat.stream_options.include_usage),
        body=body,
        meta={"key_id": admission.key_id} if admission.key_id else {},
    )
    inbox = gateway.relay.open(request_id)
    exchange = Exchange(gateway, job, inbox)
    exchange.client_request_id = client_request_id(request)
    try:
        await exchange.submit()
    except GatewayError as error:
        gateway.relay.close(request_id)
        return error_response(error, headers)
    except Exception:
        gateway.relay.close(request_id)
        return error_response(unavailable("The gateway cannot reach its queue (Redis) right now."), headers)

    def release() -> None:
        gateway.relay.close(request_id)

    if stream:
        return await stream_response(exchange, headers, release)
    return await json_response(exchange, headers, release)


def plan_is_free(gateway: Gateway, plan: list[Route]) -> bool:
    """A request is free when every candidate is a free model (auto-free never falls back to paid ones)."""
    for route in plan:
        model = gateway.catalog.get(route.model)
        if model is None or not model.free:
            return False
    return True


ROUTES = [("POST", "/chat/completions", chat_completions)]
