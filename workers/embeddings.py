"""One embeddings attempt at one provider, answered in the encoding the client asked for.

The OpenAI SDKs ask for ``encoding_format: base64`` by default, and many upstreams only do floats (or
answer base64 requests with empty data). So the upstream answers in whatever it can (see the adapter's
``embeddings_request``) and this module converts: base64 is little-endian float32, exactly what the SDK
decodes. A large batch is decoded, converted and re-encoded in a thread so the worker's event loop keeps
serving its other jobs.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from array import array
from typing import Any

import msgspec

from common.wire import Job, Route
from workers.chat import cost_fn
from workers.chunks import CostFn, add_cost, encode_json
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError, malformed
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import send

OFFLOAD_BYTES = 256 * 1024  # upstream bodies larger than this are processed off the event loop
_LITTLE_ENDIAN = sys.byteorder == "little"


def to_base64(vector: list[float]) -> str:
    packed = array("f", vector)
    if not _LITTLE_ENDIAN:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def from_base64(text: str) -> list[float]:
    unpacked = array("f")
    unpacked.frombytes(base64.b64decode(text))
    if not _LITTLE_ENDIAN:
        unpacked.byteswap()
    return unpacked.tolist()


def convert(vector: Any, want_base64: bool) -> Any:
    """One embedding (float list or base64 string) in the client's encoding; base64 passes untouched."""
    if want_base64:
        return vector if isinstance(vector, str) else to_base64(vector)
    return from_base64(vector) if isinstance(vector, str) else vector


def count_inputs(value: Any) -> tuple[int, int]:
    """(number of inputs, estimated prompt tokens) of an OpenAI ``input``, for missing upstream usage."""
    if isinstance(value, str):
        return 1, max(1, len(value) // 4)
    items = list(value or ())
    if items and all(isinstance(v, int) for v in items):
        return 1, len(items)
    tokens = sum(len(v) if isinstance(v, list) else max(1, len(str(v)) // 4) for v in items)
    return len(items), tokens


def build_body(raw: bytes, adapter: Any, body: dict[str, Any], route: Route,
               cost: CostFn | None) -> tuple[bytes, dict[str, Any]]:
    """The upstream's raw JSON → (the client's response body, its usage). CPU-bound; may run in a thread."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise malformed("upstream returned a body that is not JSON") from None
    vectors, upstream_usage = adapter.embeddings_response(data)
    expected, estimated = count_inputs(body.get("input"))
    if len(vectors) != expected:  # e.g. an empty list for a base64 request the upstream did not understand
        raise malformed(f"upstream returned {len(vectors)} embeddings for {expected} inputs")
    want_base64 = body.get("encoding_format") == "base64"
    prompt_tokens = _tokens(upstream_usage, estimated)
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    add_cost(usage, cost)
    response = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": convert(v, want_base64)}
                 for i, v in enumerate(vectors)],
        "model": route.model,
        "provider": route.provider,
        "usage": usage,
    }
    return encode_json(response), usage


def _tokens(usage: dict[str, Any] | None, estimated: int) -> int:
    value = (usage or {}).get("prompt_tokens")
    if value is None:
        value = (usage or {}).get("total_tokens")
    return int(value) if isinstance(value, int) and value >= 0 else estimated


@handler("embeddings")
async def serve_embeddings(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "embeddings_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no embeddings", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    spec = adapter.embeddings_request(runtime.upstream(route.provider), route.upstream_model, body)
    response = await send(runtime.http, adapter, spec)
    raw, cost = response.content, cost_fn(runtime, route.model)
    if len(raw) > OFFLOAD_BYTES:
        payload, usage = await asyncio.to_thread(build_body, raw, adapter, body, route, cost)
    else:
        payload, usage = build_body(raw, adapter, body, route, cost)
    return Answer("result", payload, usage)

