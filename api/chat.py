"""``POST /chat/completions``: validate, plan, then hand over to the shared dispatch path."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.body import read_json
from api.admission import refuse_unknown_key
from api.dispatch import Dispatch
from api.gateway import Gateway
from common.errors import GatewayError
from common.wire import ChatRequest
from router.plan import plan_for


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "chat")
    try:
        body, chat = await read_json(request, ChatRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = chat.model
        output_tokens = chat.max_completion_tokens or chat.max_tokens
        try:
            plan = plan_for(gateway.catalog, chat.model, extra_models=chat.models, health=gateway.health,
                            messages=chat.messages, tools=chat.tools, output_tokens=output_tokens)
        except GatewayError as error:
            raise await refuse_unknown_key(gateway, request, error) from None
        await dispatch.admit(plan, messages=_builtins(chat.messages), tools=_builtins(chat.tools),
                             output_tokens=output_tokens)
    except GatewayError as error:
        return dispatch.refuse(error)
    stream = bool(chat.stream)
    include_usage = bool(stream and chat.stream_options and chat.stream_options.include_usage)
    return await dispatch.answer(dispatch.job("chat", plan, body=body, stream=stream, include_usage=include_usage,
                                              anthropic_beta=request.headers.get("anthropic-beta")))


def _builtins(items: list[Any] | None) -> list[Any]:
    return msgspec.to_builtins(items or [])


ROUTES = [("POST", "/chat/completions", chat_completions)]
