"""``POST /images/generations`` and ``/images/edits``: validate against what the model takes, reserve ``n``
images, hand over.

What a model accepts (sizes, qualities, ``n``, ``response_format``, ``style``, gpt-image's options) and
what one image costs are ``router/media.py``'s data, read here once per request: a value the model does
not take is a 400 naming the field before any upstream call. The worst case reserved at admission is
``n`` images at the dearest price the request can reach at any candidate. The answer is OpenAI's
``ImagesResponse`` as one JSON result (a large ``b64_json`` answer crosses Redis in bounded "part" events,
``common/wire.py`` ``EVENT_PART_BYTES``, joined for this request alone).
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import msgspec

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json, validation_error
from api.exchange.dispatch import Dispatch
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from api.routes.uploads import FilePart, read_form
from common.errors import GatewayError, invalid, unavailable
from common.wire import ImageRequest, Route
from router.catalog import Catalog
from router.media import GENERIC, ImageSpec, image_spec

GPT_IMAGE_OPTIONS = ("background", "output_format", "output_compression", "moderation")


async def create_image(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "images")
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
    return await dispatch.answer(dispatch.job("image", plan, body=body))


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


def worst_case(catalog: Catalog, plan: list[Route], image: ImageRequest, input_images: int = 0) -> Decimal:
    """The most ``n`` images can cost at any candidate: per image at the dearest price the asked quality
    and size can reach, or per token (prompt, the most output tokens an image may be billed, and as many
    for each input image of an edit, at the input image rate)."""
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
        by_tokens += Decimal(model.image_input_price or model.prompt_price) * spec.output_tokens_per_image \
            * input_images
        worst = max(worst, per_image * n, by_tokens)
    return worst


# -- /images/edits: a multipart upload ------------------------------------------------------------------------

BLOB_TTL_S = 120  # as for transcriptions: how long unclaimed images may sit in Redis
EDIT_FILES = ("image", "image[]", "mask")
blob_encoder = msgspec.msgpack.Encoder()


async def create_image_edit(request: Request) -> Response:
    """The images (``image``, or gpt-image's ``image[]``) and ``mask`` go to the worker once, as one
    msgpack blob under a short-lived Redis key (the job carries the key), like a transcription's audio; the
    text fields are checked and the request admitted when the first file begins, before it streams in."""
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "images")
    plan: list[Route] = []
    fields: dict[str, Any] = {}
    spec = GENERIC

    async def admit(items: list[tuple[str, Any]]) -> None:
        nonlocal plan, fields, spec
        fields, image = edit_fields(items)
        dispatch.exchange.model = image.model
        plan = endpoint_plan(gateway, image.model, modality="image", capability="images")
        model = gateway.catalog.get(plan[0].model) or gateway.catalog.resolve(image.model)
        spec = image_spec(model)
        if not spec.edit_images:
            raise invalid(f"{model.id} does not edit images; use a model that does (gpt-image-1, dall-e-2).",
                          param="model")
        check_request(image, spec, model.id)
        await dispatch.admit(plan, request={"max_tokens": 1, "n": image.n},  # files not seen yet: the most
                             extra_cost=worst_case(gateway.catalog, plan, image, spec.edit_images))

    async def early(items: list[tuple[str, Any]]) -> None:
        """Admit before the files stream in, when the fields it needs came first (the SDK sends them first)."""
        names = {name for name, _ in items}
        if {"model", "prompt"} <= names:
            await admit(items)

    try:
        await dispatch.identify()  # who calls, before a byte of the upload is read
        form = await read_form(request, gateway.settings.limits.max_upload_bytes, file_fields=EDIT_FILES,
                               max_files=17, what="image upload", before_file=early,
                               hint="Send the edit as multipart/form-data with 'image', 'prompt' and 'model'.")
        if not plan:  # no file, or the fields came after it
            await admit(form.items)
        check_files(form.files, spec)
    except GatewayError as error:
        return await dispatch.refuse(error)
    blob_key = gateway.names.blob(dispatch.request_id)
    try:
        blob = blob_encoder.encode([(f.field.removesuffix("[]"), f.filename, f.content_type, f.data)
                                    for f in form.files])
        del form  # the bytes now live in Redis only, until a worker takes them
        try:
            await gateway.redis.set(blob_key, blob, ex=BLOB_TTL_S)
        except Exception:
            return await dispatch.refuse(unavailable("The gateway cannot reach its queue (Redis) right now."))
        del blob
        return await dispatch.answer(dispatch.job("image", plan, body=msgspec.json.encode(fields), blob_key=blob_key))
    finally:
        await asyncio.shield(_forget(gateway, blob_key))


def edit_fields(items: list[tuple[str, Any]]) -> tuple[dict[str, Any], ImageRequest]:
    """The form's text fields, typed as ``/images/generations`` takes them (numbers from their text)."""
    fields: dict[str, Any] = {}
    for name, value in items:
        if name in ("n", "output_compression"):
            try:
                value = int(value)
            except ValueError:
                raise invalid(f"'{name}' must be an integer.", param=name) from None
        fields[name] = value
    if not fields.get("model"):
        raise invalid("Missing required parameter: 'model'.", param="model")
    try:
        return fields, msgspec.convert(fields, ImageRequest)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None


def check_files(files: list[FilePart], spec: ImageSpec) -> None:
    images = [f for f in files if f.field != "mask"]
    if not images:
        raise invalid("Missing required parameter: 'image'.", param="image")
    if len(images) > spec.edit_images:
        raise invalid(f"This model edits at most {spec.edit_images} image(s) per request.", param="image")
    if sum(f.field == "mask" for f in files) > 1:
        raise invalid("Send at most one 'mask'.", param="mask")
    for part in files:
        if len(part.data) > spec.edit_image_bytes:
            raise GatewayError("payload_too_large", f"Each image may have at most "
                               f"{spec.edit_image_bytes // (1024 * 1024)} MB for this model.", param=part.field)


async def _forget(gateway: Gateway, key: str) -> None:
    with contextlib.suppress(Exception):  # Redis trouble: the key's TTL removes it soon anyway
        await gateway.redis.delete(key)


ROUTES = [("POST", "/images/generations", create_image), ("POST", "/images/edits", create_image_edit)]
