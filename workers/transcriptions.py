"""One transcription attempt at one provider: the uploaded audio, sent on as multipart.

The audio reaches the worker once, through a short-lived Redis key (``Job.blob_key``) that the web tier
wrote. The worker takes it with GETDEL, so no copy stays behind once an upstream has it. If the attempt
fails in a way that another attempt may follow (a retry here, or the next provider's pool), the bytes are
put back first; the web tier deletes the key when the request ends, whatever the outcome.

Text formats (``text``, ``srt``, ``vtt``) come back as ``text/plain`` like OpenAI's; JSON formats get
``usage.cost`` when the upstream reports usage.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.errors import GatewayError
from common.wire import Job, Route
from workers.chunks import encode_json
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError, malformed
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import send

BLOB_TTL_S = 120  # must match api/routes/transcriptions.py: how long unclaimed audio may sit in Redis
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
TEXT_TYPE = "text/plain; charset=utf-8"


async def take_audio(runtime: Runtime, key: str) -> bytes:
    audio = await runtime.redis.getdel(key)
    if audio is None:
        raise GatewayError(
            "temporarily_unavailable",
            "The uploaded audio is no longer available (the worker that had it stopped). Send it again.",
            retry_after=1,
        )
    return audio


async def put_back(runtime: Runtime, key: str, audio: bytes) -> None:
    """Make the audio available to the next attempt; never let this mask the upstream's error."""
    try:
        await runtime.redis.set(key, audio, ex=BLOB_TTL_S)
    except Exception:
        pass


def cost_of(runtime: Runtime, route: Route, usage: dict[str, Any]) -> Decimal | None:
    """USD for a transcription: by audio duration (whisper) or by tokens (gpt-4o-transcribe), if known."""
    model = runtime.catalog.get(route.model)
    if model is None or not model.listed:
        return None
    if usage.get("type") == "duration" and isinstance(usage.get("seconds"), (int, float)):
        return runtime.catalog.audio_cost(model, usage["seconds"])
    if usage.get("type") == "tokens":
        return runtime.catalog.cost(model, {"prompt_tokens": usage.get("input_tokens"),
                                            "completion_tokens": usage.get("output_tokens")})
    return None


def shape(raw: bytes, upstream_type: str, fmt: str, runtime: Runtime, route: Route) -> tuple[bytes, str, dict]:
    """(body for the client, its content type, usage for accounting) from the upstream's answer."""
    is_json = "json" in upstream_type
    if fmt in TEXT_FORMATS:
        if not is_json:
            return raw, TEXT_TYPE, {}
        data = _json(raw)  # an upstream that ignored response_format: give the client its text anyway
        return str(data.get("text", "")).encode(), TEXT_TYPE, {}
    data = _json(raw) if is_json else {"text": raw.decode("utf-8", "replace")}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    accounting: dict[str, Any] = {}
    if usage is not None:
        cost = cost_of(runtime, route, usage)
        if cost is not None:
            usage["cost"] = accounting["cost"] = cost
        accounting["prompt_tokens"] = usage.get("input_tokens") or 0
        accounting["completion_tokens"] = usage.get("output_tokens") or 0
    elif isinstance(data.get("duration"), (int, float)):  # verbose_json without usage (Groq): bill the time
        cost = cost_of(runtime, route, {"type": "duration", "seconds": data["duration"]})
        if cost is not None:
            accounting["cost"] = cost
    return encode_json(data), "application/json", accounting


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise malformed("upstream returned a body that is not JSON") from None
    if not isinstance(data, dict):
        raise malformed("upstream returned an unexpected transcription body")
    return data


@handler("transcription")
async def serve_transcription(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "transcription_request") or not job.blob_key:
        raise UpstreamError(400, f"the provider {route.provider} serves no transcriptions", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    fields: dict[str, Any] = dict(job.meta.get("fields") or {})
    audio = await take_audio(runtime, job.blob_key)
    spec = adapter.transcription_request(
        runtime.upstream(route.provider), route.upstream_model, fields,
        job.meta.get("filename") or "audio.wav", audio, job.meta.get("content_type") or "application/octet-stream",
    )
    try:
        response = await send(runtime.http, adapter, spec)
    except UpstreamError as error:
        if error.retryable or error.fallback:
            await put_back(runtime, job.blob_key, audio)
        raise
    fmt = str(fields.get("response_format") or "json")
    body, content_type, usage = shape(response.content, response.headers.get("content-type", ""), fmt,
                                      runtime, route)
    return Answer("result", body, usage or None, fields={"content_type": content_type})
