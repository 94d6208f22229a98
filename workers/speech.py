"""One speech synthesis at one provider: the upstream's audio bytes, passed on as they arrive.

Each chunk the upstream sends goes out as soon as the previous PUBLISH is done (so a fast upstream's
chunks gather into larger events, and a slow one's go out at once), cut to at most ``PIECE_BYTES`` per
event: several fit in the web tier's buffer for a stream its client has not read yet
(``MEGABRAIN_STREAM_BUFFER_BYTES``); the ``done`` that settles the request follows the last bytes. Nothing is published before the
upstream's first byte, so a failure up to then is retried or handed to the next provider; after it, the
client's body is cut (``api/formats/raw_body.py``), never passed off as a whole file. Billed per input
character at ``router/media.py``'s price (the speech API reports no usage).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.wire import EVENT_PART_BYTES, Job, Route
from router.media import speech_spec
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_bytes


PIECE_BYTES = EVENT_PART_BYTES // 2  # 256 KiB: one event, never split into parts


def pieces(chunk: bytes, size: int = PIECE_BYTES) -> list[bytes]:
    return [chunk[i:i + size] for i in range(0, len(chunk), size)]


def speech_usage(runtime: Runtime, route: Route, text: str) -> dict[str, Any]:
    model = runtime.catalog.get(route.model)
    free = model is None or not model.listed or model.free
    cost = Decimal(0) if free else speech_spec(model).per_character * len(text)  # type: ignore[arg-type]
    return {"prompt_tokens": 0, "completion_tokens": 0, "characters": len(text), "cost": cost}


@handler("speech")
async def serve_speech(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "speech_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no speech", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    spec = adapter.speech_request(runtime.upstream(route.provider), route.upstream_model, body)
    async with open_bytes(runtime.http, adapter, spec, runtime.stream_timeouts) as (headers, chunks):
        if "json" in headers.get("content-type", ""):
            raise UpstreamError(502, "upstream answered speech with JSON, not audio", retryable=True)
        async for chunk in chunks:
            for piece in pieces(chunk):
                await pub.data_now(piece)  # awaited: meanwhile the next chunk gathers in the socket buffer
    if not pub.committed:
        raise UpstreamError(502, "upstream answered speech with no audio", retryable=True)
    return Answer("done", b"", speech_usage(runtime, route, str(body.get("input") or "")))
