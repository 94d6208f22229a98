"""One image generation or edit at one provider: OpenAI's images API, billed per token or per image.

An edit's images reach the worker once, through a short-lived Redis key, as a transcription's audio does
(taken with GETDEL, put back for the next attempt when one may follow).

The upstream's ``ImagesResponse`` goes to the client as it came (``created``, ``data`` with ``b64_json``
or ``url`` and ``revised_prompt``, gpt-image's ``usage``…), with the serving ``model`` and ``provider``
and ``usage.cost`` added. Cost: the reported tokens at the catalog's token prices where the model is
priced so (gpt-image), else the images returned at ``router/media.py``'s price per image (dall-e). The
answer is one result event (a few large images are megabytes: the publisher sends it in bounded parts).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.wire import Job, Route
from router.catalog import Catalog
from router.media import image_spec
from router.model import Model
from workers.chunks import encode_json
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.transcriptions import put_back, take_audio
from workers.upstream import send_json


def image_usage(catalog: Catalog, model: Model | None, body: dict[str, Any], images: int,
                reported: dict[str, Any] | None) -> dict[str, Any]:
    """The canonical usage of an image answer, with its exact cost."""
    reported = reported or {}
    prompt = reported.get("input_tokens") if isinstance(reported.get("input_tokens"), int) else 0
    output = reported.get("output_tokens") if isinstance(reported.get("output_tokens"), int) else 0
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": output, "images": images}
    if model is None or not model.listed or model.free:
        usage["cost"] = Decimal(0)
        return usage
    by_tokens = Decimal(model.completion_price) > 0 and (prompt or output)
    if by_tokens:  # input images (edits) at their own rate where the catalog has one
        details = reported.get("input_tokens_details") if isinstance(reported.get("input_tokens_details"), dict) \
            else {}
        image_in = details.get("image_tokens") if isinstance(details.get("image_tokens"), int) else 0
        image_in = min(max(0, image_in), prompt)
        rate = Decimal(model.image_input_price or model.prompt_price)
        usage["cost"] = catalog.cost(model, {"prompt_tokens": prompt - image_in, "completion_tokens": output}) \
            + rate * image_in
    else:
        per_image = image_spec(model).price(body.get("quality"), body.get("size")) or Decimal(0)
        usage["cost"] = per_image * images
    return usage


@handler("image")
async def serve_image(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "images_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no image generation", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    upstream = runtime.upstream(route.provider)
    if job.blob_key:  # /images/edits: the uploaded images wait in Redis (api/routes/images.py)
        blob = await take_audio(runtime, job.blob_key)
        files = [(field, (name, data, kind)) for field, name, kind, data in msgspec.msgpack.decode(blob)]
        spec = adapter.image_edit_request(upstream, route.upstream_model, body, files)
        try:
            data = await send_json(runtime.http, adapter, spec)
        except UpstreamError as error:
            if error.retryable or error.fallback:
                await put_back(runtime, job.blob_key, blob)  # for the next attempt
            raise
    else:
        spec = adapter.images_request(upstream, route.upstream_model, body)
        data = await send_json(runtime.http, adapter, spec)
    if hasattr(adapter, "images_response") and isinstance(data, dict):  # a protocol of its own (Gemini)
        data = adapter.images_response(data)
    images = data.get("data") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images or not all(
            isinstance(i, dict) and (i.get("b64_json") or i.get("url")) for i in images):
        raise UpstreamError(502, "upstream returned an images answer without images", retryable=True)
    reported = data.get("usage") if isinstance(data.get("usage"), dict) else None
    usage = image_usage(runtime.catalog, runtime.catalog.get(route.model), body, len(images), reported)
    data["model"], data["provider"] = route.model, route.provider
    data["usage"] = {**(reported or {}), "cost": usage["cost"]}
    return Answer("result", encode_json(data), usage)
