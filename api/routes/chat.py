"""``POST /chat/completions``: validate, plan, then hand over to the shared dispatch path."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch, plan_reaches
from api.gateway import Gateway
from common.errors import GatewayError
from common.wire import ChatRequest
from router.forwarding import anthropic_betas, refuse_priced
from router.plan import plan_for
from router.preferences import CHECKED_PARAMETERS


async def chat_completions(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "chat")
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, chat = await read_json(request, ChatRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = chat.model or (chat.models[0] if chat.models else "")
        output_tokens = chat.max_completion_tokens or chat.max_tokens
        plan = plan_for(gateway.catalog, chat.model, extra_models=chat.models, health=gateway.health,
                        messages=chat.messages, tools=chat.tools, output_tokens=output_tokens,
                        preferences=chat.provider, parameters=request_parameters(chat, body),
                        affinity=caller_affinity(request))
        refuse_priced(chat.priced())
        beta = anthropic_betas(request.headers.get("anthropic-beta")) if plan_reaches(gateway, plan, "anthropic") \
            else None
        await dispatch.admit(plan, messages=_builtins(chat.messages), tools=_builtins(chat.tools),
                             request=output_request(chat), with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    stream = bool(chat.stream)
    include_usage = bool(stream and chat.stream_options and chat.stream_options.include_usage)
    return await dispatch.answer(dispatch.job("chat", plan, body=body, stream=stream, include_usage=include_usage,
                                              anthropic_beta=beta))


def _builtins(items: list[Any] | None) -> list[Any]:
    return msgspec.to_builtins(items or [])


def output_request(chat: ChatRequest) -> dict[str, Any]:
    """The fields the output plan reads (router/shaping.py ``output_plan``), for admission's worst case."""
    return {"max_tokens": chat.max_tokens, "max_completion_tokens": chat.max_completion_tokens, "n": chat.n,
            "best_of": chat.best_of, "reasoning_effort": chat.reasoning_effort, "thinking": chat.thinking,
            "reasoning": msgspec.structs.asdict(chat.reasoning) if chat.reasoning is not None else None}


def request_parameters(chat: ChatRequest, body: bytes) -> frozenset[str]:
    """The optional parameters a request uses, for ``provider.require_parameters``."""
    used = {name for name in CHECKED_PARAMETERS if getattr(chat, name, None) is not None}
    if b'"reasoning' in body:  # "reasoning" or "reasoning_effort" (not validated here; adapters read them)
        used.add("reasoning")
    return frozenset(used)


def caller_affinity(request: Request) -> str:
    """Who asks, as a short hash (never the key itself): equally good endpoints are chosen per caller and
    stay chosen, so a key's prompt cache at its provider stays warm."""
    who = request.headers.get("authorization") or (request.client.host if request.client else "")
    return hashlib.blake2b(who.encode(), digest_size=8).hexdigest()


ROUTES = [("POST", "/chat/completions", chat_completions)]
