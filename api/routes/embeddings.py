"""``POST /embeddings``: validate, plan among embedding models, enqueue, answer with the worker's result.

Also home of the planning shared by non-chat endpoints: a pass-through ``provider/model`` id counts as that
endpoint's kind of model at a provider that serves it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.gateway import Gateway
from common.errors import GatewayError, invalid
from common.wire import EmbeddingRequest, Route
from router.plan import plan_for

async def create_embeddings(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "embeddings")
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, embed = await read_json(request, EmbeddingRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = embed.model
        check_input(embed.input, gateway.settings.limits.max_embedding_inputs)
        plan = endpoint_plan(gateway, embed.model, modality="embedding", capability="embeddings")
        # what it could cost: its input at most one token per byte (a budget's or credits' reservation)
        await dispatch.admit(plan, with_enqueue=True, prompt_tokens=len(body))
    except GatewayError as error:
        return await dispatch.refuse(error)
    return await dispatch.answer(dispatch.job("embeddings", plan, body=body))


def check_input(value: str | list[Any], max_inputs: int) -> None:
    """A string, strings, one token array or token arrays; nothing empty; at most ``max_inputs`` items."""
    if isinstance(value, str):
        if not value:
            raise invalid("'input' must not be an empty string.", param="input")
        return
    if not value:
        raise invalid("'input' must not be an empty array.", param="input")
    if all(isinstance(v, int) for v in value):  # one input given as token ids
        return
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise invalid("'input' must not contain empty strings.", param="input")
    elif all(isinstance(v, list) for v in value):
        if any(not v for v in value):
            raise invalid("'input' must not contain empty token arrays.", param="input")
    else:
        raise invalid("'input' must be all strings, all token ids, or all token arrays.", param="input")
    if len(value) > max_inputs:
        raise invalid(f"'input' has {len(value)} items; at most {max_inputs} are allowed per request.",
                      param="input")


def endpoint_plan(gateway: Gateway, model_id: str, *, modality: str, capability: str) -> list[Route]:
    """The plan for a non-chat endpoint.

    A ``provider/model`` id the catalog does not list is passed through to that provider as this endpoint's
    kind of model when the provider serves this endpoint (its registry capability); it has no alternatives.
    """
    catalog = gateway.catalog
    model = catalog.resolve(model_id)
    if model.listed or model.modality == modality:
        return plan_for(catalog, model_id, modality=modality, healthy=gateway.health.healthy)
    provider = catalog.providers[model.provider]
    if capability not in provider.capabilities:
        raise invalid(f"The provider {provider.name} serves no {capability} on this gateway.", param="model")
    if not provider.configured:
        raise GatewayError(
            "temporarily_unavailable",
            f"The model {model_id!r} is known, but its provider {provider.name} is not configured on this gateway.",
            retry_after=60, param="model",
        )
    return [Route(provider=model.provider, model=model.id, upstream_model=model.upstream_id)]


ROUTES = [("POST", "/embeddings", create_embeddings)]
