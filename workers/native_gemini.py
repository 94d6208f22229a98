"""Gemini ``generateContent`` passed through to a Gemini upstream (``Job.native``, protocol
``gemini_generate``): what Gemini CLI and the ``google-genai`` SDK send reaches Google as they sent it.

Changed on the way: the model (it is in the URL, the upstream's id; a ``model`` field in the body is
dropped), ``maxOutputTokens`` set to the request's output plan (``router/shaping.py``: the client's cap
clipped to the model's output limit; admission reserved for exactly that), and thought signatures this gateway
issued for another provider's reasoning (a session that switched models) replaced by Google's documented
placeholder on function calls and dropped elsewhere, since Gemini would refuse them as forged. The
answer comes back byte for byte: frames are read alongside only for usage, in-band errors, and to hold
the stream back until its first content so an early failure can still be retried or handed over.

Also ``countTokens``: Gemini's own count of the client's body, or the local estimate if that fails.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from common.wire import GEMINI_SIGNATURE_MAGIC, Job, Route
from router.auto import estimate_prompt_tokens
from router.shaping import OutputPlan
from workers.accounting import Progress
from workers.chunks import CostFn, add_cost
from workers.jobs import Answer
from workers.providers.base import RequestSpec, Upstream, UpstreamError, malformed
from workers.providers.gemini import inband_error, gemini_headers, model_url, usage
from workers.providers.gemini_request import DUMMY_THOUGHT_SIGNATURE
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_stream, send_json

_encode = msgspec.json.encode
_OURS = base64.b64encode(GEMINI_SIGNATURE_MAGIC)  # how every signature of ours begins
FRAME_END = b"\r\n\r\n"


def _field(obj: dict[str, Any], camel: str, snake: str) -> str:
    """The key ``obj`` spells a field with (proto3 JSON takes both spellings)."""
    return snake if snake in obj and camel not in obj else camel


def _cap(payload: dict[str, Any], cap: int | None) -> None:
    """``maxOutputTokens`` as the output plan says (None: the client sent none and none is needed)."""
    if cap is None:
        return
    config = payload.setdefault(_field(payload, "generationConfig", "generation_config"), {})
    if isinstance(config, dict):  # the web tier checked it is one
        config.pop("max_output_tokens", None)
        config["maxOutputTokens"] = cap


def _drop_our_signatures(payload: dict[str, Any]) -> None:
    for content in payload.get("contents") or ():
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            name = _field(part, "thoughtSignature", "thought_signature")
            signature = part.get(name)
            if isinstance(signature, str) and signature.encode().startswith(_OURS):
                if "functionCall" in part or "function_call" in part:
                    part[name] = DUMMY_THOUGHT_SIGNATURE
                else:
                    del part[name]


def request_body(job: Job, plan: OutputPlan) -> dict[str, Any]:
    assert job.native is not None
    payload: dict[str, Any] = msgspec.json.decode(job.native.body)
    payload.pop("model", None)
    _cap(payload, plan.cap)
    if _OURS in job.native.body:
        _drop_our_signatures(payload)
    return payload


def _spec(up: Upstream, url: str, payload: dict[str, Any], stream: bool) -> RequestSpec:
    headers = gemini_headers(up)
    if stream:
        headers["accept"] = "text/event-stream"
    return RequestSpec("POST", url, headers=headers, content=_encode(payload))


def _has_content(response: dict[str, Any]) -> bool:
    return any((c.get("content") or {}).get("parts") for c in response.get("candidates") or () if isinstance(c, dict))


async def serve_generate(runtime: Runtime, job: Job, route: Route, up: Upstream, pub: Publisher,
                         cost: CostFn | None, plan: OutputPlan) -> Answer:
    payload = request_body(job, plan)
    adapter = runtime.adapter(route.provider)
    if not job.stream:
        data = await send_json(runtime.http, adapter, _spec(up, model_url(up, route.upstream_model, "generateContent"),
                                                           payload, False))
        if not isinstance(data, dict):
            raise malformed("Gemini returned a body that is not an object")
        if data.get("error"):
            raise inband_error(data["error"])
        return Answer("result", _encode(data), add_cost(usage(data.get("usageMetadata")), cost),
                      fields={"native": True})
    url = model_url(up, route.upstream_model, "streamGenerateContent") + "?alt=sse"
    found: dict[str, Any] | None = None
    finished = False
    held: list[bytes] = []  # frames before the first content: not committed, so a retry stays possible
    pub.native = True
    progress = pub.progress = Progress(cost=cost)  # Gemini reports running totals on every chunk
    async with open_stream(runtime.http, adapter, _spec(up, url, payload, True), runtime.stream_timeouts) as events:
        async for _, data in events:
            try:
                response = msgspec.json.decode(data)
            except msgspec.DecodeError:
                raise malformed("Gemini sent a stream chunk that is not JSON") from None
            if not isinstance(response, dict):
                continue
            if response.get("error"):
                raise inband_error(response["error"])
            found = progress.usage = usage(response.get("usageMetadata")) or found
            finished = finished or any(isinstance(c, dict) and c.get("finishReason")
                                       for c in response.get("candidates") or ())
            held.append(b"data: " + data.encode() + FRAME_END)
            if pub.committed or _has_content(response):
                pub.data(b"".join(held))
                held.clear()
    if not finished:
        raise malformed("Gemini stream ended before a finishReason")
    return Answer("done", b"".join(held), add_cost(found, cost), fields={"native": True})


async def count(runtime: Runtime, job: Job, route: Route, up: Upstream) -> dict[str, Any]:
    """``{"totalTokens": n}`` from Gemini, or the local estimate when that call fails."""
    assert job.native is not None
    payload: dict[str, Any] = msgspec.json.decode(job.native.body)
    payload.pop("model", None)
    inner = payload.get(_field(payload, "generateContentRequest", "generate_content_request"))
    if isinstance(inner, dict):
        inner["model"] = f"models/{route.upstream_model}"
    try:
        data = await send_json(runtime.http, runtime.adapter(route.provider),
                               _spec(up, model_url(up, route.upstream_model, "countTokens"), payload, False))
        return {**data, "totalTokens": int(data["totalTokens"])}
    except (UpstreamError, KeyError, TypeError, ValueError):
        canonical = msgspec.json.decode(job.body)
        return {"totalTokens": estimate_prompt_tokens(canonical.get("messages") or [], canonical.get("tools"))}
