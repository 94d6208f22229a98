"""``POST /messages`` and ``POST /messages/count_tokens``: the Anthropic Messages API, for Claude Code and
every Anthropic-SDK program, in front of every provider.

The model id resolves as in chat completions. The request travels as the canonical body to every
candidate; candidates at an Anthropic-protocol provider also get the client's own body (``Job.native``),
so Claude models are served without a round trip through another shape (``workers/native.py``).
Refusals use Anthropic's error shape (``api/formats/anthropic_messages.py``).
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch, plan_is_free, plan_reaches
from api.formats.anthropic_messages import ANTHROPIC_MESSAGES, MessagesRequest, canonical_request
from api.gateway import Gateway
from api.exchange.answer import FinishingResponse
from common.errors import GatewayError, invalid
from common.wire import Native, Route
from router.auto import estimate_prompt_tokens
from router.forwarding import anthropic_betas, refuse_priced, server_tools_worst_case
from router.plan import plan_for

_encode = msgspec.json.encode


def _native(gateway: Gateway, request: Request, body: bytes, plan: list[Route],
            *, refuse: bool = True) -> Native | None:
    """The client's own body for the plan's Anthropic candidates, with the ``anthropic-beta`` values that
    may pass; a priced beta is a 400 naming it (router/forwarding.py)."""
    if not plan_reaches(gateway, plan, "anthropic"):
        return None
    beta = anthropic_betas(request.headers.get("anthropic-beta"), refuse=refuse)
    return Native(protocol="anthropic_messages", body=body, headers={"anthropic-beta": beta} if beta else {})


async def _decode(dispatch: Dispatch, request: Request,
                  *, any_model: bool = False) -> tuple[bytes, MessagesRequest, dict, list[Route]]:
    """The raw body, the validated request, its canonical body and its plan (empty for a model nobody
    serves when ``any_model``: a local count needs no provider)."""
    gateway = dispatch.gateway
    await dispatch.identify()  # who calls, before the body is read or planned
    body, message = await read_json(request, MessagesRequest, gateway.settings.limits.max_body_bytes)
    dispatch.exchange.model = message.model
    canonical = canonical_request(message, stream=bool(message.stream))
    try:
        plan = plan_for(gateway.catalog, message.model, health=gateway.health, messages=canonical["messages"],
                        tools=canonical.get("tools"))
    except GatewayError as error:
        if not (any_model and error.error_type == "model_not_found"):
            raise
        plan = []
    return body, message, canonical, plan


async def create_message(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "messages", ANTHROPIC_MESSAGES)
    try:
        body, message, canonical, plan = await _decode(dispatch, request)
        if message.max_tokens is None:
            raise invalid("max_tokens: this field is required", param="max_tokens")
        refuse_priced(message.priced())
        native = _native(gateway, request, body, plan)
        # Server tools reach Anthropic only (the canonical body has none): priced there, or refused.
        extra = server_tools_worst_case(message.tools, free=plan_is_free(gateway, plan)) if native else None
        await dispatch.admit(plan, messages=canonical["messages"], tools=canonical.get("tools"),
                             request=canonical, extra_cost=extra, with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    dispatch.format = ANTHROPIC_MESSAGES.answering(message.model)  # the id the client sent, echoed back
    stream = bool(message.stream)
    job = dispatch.job("chat", plan, body=_encode(canonical), stream=stream, include_usage=stream,
                       native=native)
    return await dispatch.answer(job)


async def count_tokens(request: Request) -> Response:
    """Exact from Anthropic's own endpoint when the model is served there (a queued job, like any call to a
    provider); otherwise a local estimate: characters / 4 plus per-message, per-tool and per-image
    overheads (``router.auto.estimate_prompt_tokens``), answered at once, even for a model id nobody
    serves (Claude Code counts constantly, and a count must not fail its session)."""
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "count_tokens", ANTHROPIC_MESSAGES)
    try:
        body, _, canonical, plan = await _decode(dispatch, request, any_model=True)
        await dispatch.admit(plan)
    except GatewayError as error:
        return await dispatch.refuse(error)
    anthropic = [route for route in plan if gateway.providers[route.provider].kind == "anthropic"]
    if anthropic and await gateway.live.has_worker(anthropic[0].provider):
        native = _native(gateway, request, body, anthropic, refuse=False)
        return await dispatch.answer(dispatch.job("count_tokens", anthropic[:1], body=_encode(canonical),
                                                  native=native))
    estimate = estimate_prompt_tokens(canonical["messages"], canonical.get("tools"))
    return FinishingResponse(dispatch.exchange, _encode({"input_tokens": estimate}), 200, dispatch.headers)


ROUTES = [
    ("POST", "/messages", create_message),
    ("POST", "/messages/count_tokens", count_tokens),
]
