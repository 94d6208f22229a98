"""``POST /moderations``: OpenAI's moderation models, through the same admission, queue and settlement.

The input is checked here: text, texts, or (omni models, their listing's ``input_modalities``) text and
``image_url`` parts; an empty input is a 400 naming ``input``. OpenAI does not charge for moderation: the
models are listed free and every answer's ``usage.cost`` is 0.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from common.errors import GatewayError, invalid
from common.wire import ModerationRequest
from router.model import Model

MAX_INPUTS = 32


async def create_moderation(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "moderations")
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, moderation = await read_json(request, ModerationRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = moderation.model
        plan = endpoint_plan(gateway, moderation.model, modality="moderation", capability="moderations")
        model = gateway.catalog.get(plan[0].model) or gateway.catalog.resolve(moderation.model)
        check_input(moderation.input, model)
        await dispatch.admit(plan, request={"max_tokens": 1}, with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    return await dispatch.answer(dispatch.job("moderation", plan, body=body))


def check_input(value: str | list[Any], model: Model) -> None:
    if isinstance(value, str):
        if not value:
            raise invalid("'input' must not be an empty string.", param="input")
        return
    if not value:
        raise invalid("'input' must not be an empty array.", param="input")
    if len(value) > MAX_INPUTS:
        raise invalid(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed.", param="input")
    if all(isinstance(v, str) for v in value):
        if not all(value):
            raise invalid("'input' must not contain empty strings.", param="input")
        return
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            continue
        if kind == "image_url" and isinstance(part.get("image_url"), dict) and part["image_url"].get("url"):
            if "image" not in model.input_modalities:
                raise invalid(f"{model.id} moderates text only: send 'text' parts.", param=f"input[{i}]")
            continue
        raise invalid("'input' items must be all strings, or 'text' and 'image_url' parts.", param=f"input[{i}]")


ROUTES = [("POST", "/moderations", create_moderation)]
