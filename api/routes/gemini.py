"""Gemini's own API (``/v1beta/models/...``), for Gemini CLI (``GOOGLE_GEMINI_BASE_URL``) and the
``google-genai`` SDKs (``http_options.base_url``), in front of every provider.

- ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``, ``:countTokens``
  (and the same under ``/v1/models/``, which google-genai 3.x calls);
- ``GET /v1beta/models`` (``pageSize``, ``pageToken``) and ``GET /v1beta/models/{model}``.

The model id is the path between ``models/`` and the last ``:``, so a canonical id keeps its slash:
``models/openai/gpt-4o-mini:generateContent`` is ``openai/gpt-4o-mini`` (the SDKs build exactly that from
``model="openai/gpt-4o-mini"``; ``%2F`` works as well). Ids are checked against the characters catalog ids
use before anything else reads them, and reach an upstream URL only as the catalog's own id, escaped.

The key comes as ``x-goog-api-key`` (what both SDKs send), ``?key=`` or ``Authorization: Bearer``; it is
a gateway key, never logged. The request travels natively to a Gemini upstream (``Job.native``: the
body as the client sent it) and as the canonical request to every other provider. Refusals use Google's
error shape (``api/formats/gemini_generate.py``).
"""

from __future__ import annotations

import re

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.exchange.answer import FinishingResponse
from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch, plan_reaches
from api.formats.gemini_generate import GEMINI_GENERATE, GeminiGenerate
from api.formats.gemini_request import canonical_request, count_request
from api.gateway import Gateway
from api.routes import listings
from common.errors import GatewayError, invalid
from common.wire import Native, Route
from router.auto import estimate_prompt_tokens
from router.plan import plan_for

_encode = msgspec.json.encode
MODEL_ID = re.compile(r"^[A-Za-z0-9@_][A-Za-z0-9._:@/-]{0,255}$")  # every catalog id fits (README "Gemini CLI")
METHODS = ("generateContent", "streamGenerateContent", "countTokens")


def model_id(name: str) -> str:
    """The model id of a ``models/{id}`` path, refused unless it is shaped like one of ours."""
    if not MODEL_ID.match(name) or ".." in name or "//" in name or name.endswith("/"):
        raise invalid(f"Invalid model name '{name[:100]}': a model id is letters, digits and . _ - : @ / "
                      "(e.g. gemini-2.5-flash or openai/gpt-4o-mini), at most 256 characters.", param="model")
    return name


def target(request: Request) -> tuple[str, str]:
    """(model id, method) of ``/models/{model}:{method}``; the method is after the last colon, since ids
    may hold colons themselves (``:free``)."""
    name, colon, method = request.path_params["target"].rpartition(":")
    if not colon or method not in METHODS:
        raise GatewayError("not_found", f"There is no method '{method or name}' here: this gateway serves "
                                        f"{', '.join(METHODS)}.")
    return model_id(name), method


def _native(gateway: Gateway, body: bytes, plan: list[Route]) -> Native | None:
    return Native(protocol="gemini_generate", body=body) if plan_reaches(gateway, plan, "gemini") else None


async def models_post(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "gemini", GEMINI_GENERATE, key_in_query=True)
    try:
        model, method = target(request)
        dispatch.exchange.model = model
        await dispatch.identify()  # who calls, before the body is read or planned
        if method == "countTokens":
            dispatch.exchange.route_name = "count_tokens"
            return await _count(dispatch, model)
        stream = method == "streamGenerateContent"
        if stream and request.query_params.get("alt") != "sse":
            raise invalid("streamGenerateContent answers Server-Sent Events only: add ?alt=sse (both SDKs do).",
                          param="alt")
        body, parsed = await read_json(request, dict, gateway.settings.limits.max_body_bytes)
        decoded = canonical_request(parsed, model, stream=stream)
        canonical = decoded.canonical
        dispatch.format = GeminiGenerate(decoded.include_thoughts)
        plan = plan_for(gateway.catalog, model, health=gateway.health, messages=canonical["messages"],
                        tools=canonical.get("tools"), output_tokens=canonical.get("max_tokens"))
        await dispatch.admit(plan, messages=canonical["messages"], tools=canonical.get("tools"),
                             request=canonical, with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    job = dispatch.job("chat", plan, body=_encode(canonical), stream=stream, include_usage=stream,
                       native=_native(gateway, body, plan))
    return await dispatch.answer(job)


async def _count(dispatch: Dispatch, model: str) -> Response:
    """Exact from Gemini when a Gemini provider serves the model (a queued job); otherwise the local
    estimate, answered at once, as on ``/v1/messages/count_tokens``: a count never fails a session."""
    gateway = dispatch.gateway
    body, parsed = await read_json(dispatch.request, dict, gateway.settings.limits.max_body_bytes)
    canonical = count_request(parsed, model)
    try:
        plan = plan_for(gateway.catalog, model, health=gateway.health, messages=canonical["messages"],
                        tools=canonical.get("tools"))
    except GatewayError as error:
        if error.error_type != "model_not_found":
            raise
        plan = []
    await dispatch.admit(plan)
    gemini = [route for route in plan if gateway.providers[route.provider].kind == "gemini"]
    if gemini and await gateway.live.has_worker(gemini[0].provider):
        return await dispatch.answer(dispatch.job("count_tokens", gemini[:1], body=_encode(canonical),
                                                  native=_native(gateway, body, gemini)))
    estimate = estimate_prompt_tokens(canonical["messages"], canonical.get("tools"))
    return FinishingResponse(dispatch.exchange, _encode({"totalTokens": estimate}), 200, dispatch.headers)


# ------------------------------------------------------------------------------------------- listing


async def models_list(request: Request) -> Response:
    return listings.gemini_list(request)


async def models_get(request: Request) -> Response:
    """``GET /v1beta/models/{model}``: one model we serve, by any id the generate route takes."""
    try:
        name = model_id(request.path_params["target"])
    except GatewayError as error:
        return Response(GEMINI_GENERATE.error_body(error.status, error.body()), status_code=error.status,
                        media_type="application/json")
    return listings.gemini_get(request, name)


# Google's SDKs call /v1beta (Gemini CLI's, google-genai before 3.0) or /v1 (google-genai 3.x): the POST
# routes are served under /v1/models too (the OpenAI listing has GET there, and answers Gemini clients in
# Gemini's shape: api/routes/listings.py).
ROUTES = [
    ("GET", "/v1beta/models", models_list),
    ("POST", "/v1beta/models/{target:path}", models_post),
    ("GET", "/v1beta/models/{target:path}", models_get),
    ("POST", "/models/{target:path}", models_post),
]
