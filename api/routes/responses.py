"""``POST /responses``: the OpenAI Responses API (stateless subset), for Codex CLI and the newer OpenAI
agent code, in front of every provider.

The request is decoded into the canonical body (``api/formats/openai_responses.py``) and served exactly
like a chat completion: same plan, limits, accounting, headers, metrics and logs.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.formats.openai_responses import OPENAI_RESPONSES, OpenAIResponses, ResponsesRequest, canonical_request
from api.gateway import Gateway
from common.errors import GatewayError
from router.plan import plan_for


async def create_response(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "responses", OPENAI_RESPONSES)
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        _, parsed = await read_json(request, ResponsesRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = parsed.model
        dispatch.format = OpenAIResponses.for_request(parsed)  # its answers restate the request's settings
        canonical = canonical_request(parsed)
        plan = plan_for(gateway.catalog, parsed.model, health=gateway.health, messages=canonical["messages"],
                        tools=canonical.get("tools"), output_tokens=parsed.max_output_tokens)
        await dispatch.admit(plan, messages=canonical["messages"], tools=canonical.get("tools"),
                             request=canonical, with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    stream = bool(parsed.stream)
    job = dispatch.job("chat", plan, body=msgspec.json.encode(canonical), stream=stream, include_usage=stream)
    return await dispatch.answer(job)


ROUTES = [("POST", "/responses", create_response)]
