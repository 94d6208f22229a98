"""``POST /images/generations``: validate against what the model takes, reserve ``n`` images, hand over.

What a model accepts (sizes, qualities, ``n``, ``response_format``, ``style``, gpt-image's options) and
what one image costs are ``router/media.py``'s data, read here once per request: a value the model does
not take is a 400 naming the field before any upstream call. The worst case reserved at admission is
``n`` images at the dearest price the request can reach at any candidate. The answer is OpenAI's
``ImagesResponse``, sent as a body in event-sized pieces (``api/formats/raw_body.py``), so a large
``b64_json`` answer never rides on one oversized pub/sub message.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.answer import JSON_KEEPALIVE_AFTER
from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.formats.raw_body import RawBody
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from common.errors import GatewayError, invalid
from common.wire import ImageRequest, Route
from router.catalog import Catalog
from router.media import ImageSpec, image_spec

JSON_BODY = RawBody("application/json", keepalive=b" ", commit_wait=JSON_KEEPALIVE_AFTER)
GPT_IMAGE_OPTIONS = ("background", "output_format", "output_compression", "moderation")


async def create_image(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "images", JSON_BODY)
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, image = await read_json(request, ImageRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = image.model
        plan = endpoint_plan(gateway, image.model, modality="image", capability="images")
        model = gateway.catalog.get(plan[0].model) or gateway.catalog.resolve(image.model)
        check_request(image, image_spec(model), model.id)
        await dispatch.admit(plan, request={"max_tokens": 1, "n": image.n},
                             extra_cost=worst_case(gateway.catalog, plan, image))
    except GatewayError as error:
        return await dispatch.refuse(error)
    return await dispatch.answer(dispatch.job("image", plan, body=body, stream=True))


def check_request(image: ImageRequest, spec: ImageSpec, model_id: str) -> None:
    """OpenAI's refusals for this model, before any upstream call."""
    n = image.n or 1
    if n > spec.max_n:
        raise invalid(f"{model_id} makes at most {spec.max_n} image(s) per request: send 'n' <= {spec.max_n}.",
                      param="n")
    if image.size is not None and spec.sizes and image.size not in spec.sizes:
        raise invalid(f"'size' must be one of {', '.join(spec.sizes)} for {model_id}.", param="size")
    if image.quality is not None and spec.qualities and image.quality not in spec.qualities:
        raise invalid(f"'quality' must be one of {', '.join(spec.qualities)} for {model_id}.", param="quality")
    if image.response_format is not None and image.response_format not in spec.response_formats:
        raise invalid(f"{model_id} answers with b64_json only; leave 'response_format' out.",
                      param="response_format")
    if image.style is not None and image.style not in spec.styles:
        allowed = f"one of {', '.join(spec.styles)}" if spec.styles else "left out"
        raise invalid(f"'style' must be {allowed} for {model_id}.", param="style")
    if not spec.gpt_image_options:
        for name in GPT_IMAGE_OPTIONS:
            if getattr(image, name) is not None:
                raise invalid(f"'{name}' is a gpt-image parameter; {model_id} does not take it.", param=name)


def worst_case(catalog: Catalog, plan: list[Route], image: ImageRequest) -> Decimal:
    """The most ``n`` images can cost at any candidate: per image at the dearest price the asked quality
    and size can reach, or per token (prompt, and the most output tokens an image may be billed)."""
    n = image.n or 1
    prompt_tokens = max(1, len(image.prompt) // 4)
    worst = Decimal(0)
    for route in plan:
        model = catalog.get(route.model)
        if model is None or model.free:
            continue
        spec = image_spec(model)
        per_image = spec.price(image.quality, image.size) or Decimal(0)
        by_tokens = catalog.cost(model, {"prompt_tokens": prompt_tokens,
                                         "completion_tokens": spec.output_tokens_per_image * n})
        worst = max(worst, per_image * n, by_tokens)
    return worst


ROUTES = [("POST", "/images/generations", create_image)]
