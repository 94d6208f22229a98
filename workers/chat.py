"""One attempt at a chat completion at one provider: non-streaming or streaming."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from common.wire import Job, Route
from workers.chunks import ChunkShaper, CostFn, finish_completion
from workers.jobs import handler
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_stream, send_json

_encode = msgspec.json.encode


def cost_fn(runtime: Runtime, model_id: str) -> CostFn | None:
    """USD cost of a request from the catalog's per-token prices, or None for unpriced models."""
    model = runtime.catalog.get(model_id)
    if model is None or not model.listed:
        return None
    prompt, completion = Decimal(model.prompt_price), Decimal(model.completion_price)

    def cost(prompt_tokens: int, completion_tokens: int) -> str:
        total = prompt * prompt_tokens + completion * completion_tokens
        return format(total.normalize(), "f") if total else "0"

    return cost


@handler("chat")
async def serve_chat(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> None:
    adapter = runtime.adapter(route.provider)
    upstream = runtime.upstream(route.provider)
    body: dict[str, Any] = msgspec.json.decode(job.body)
    cost = cost_fn(runtime, route.model)
    spec = adapter.chat_request(upstream, route.upstream_model, body, job.stream)
    if not job.stream:
        data = await send_json(runtime.http, adapter, spec)
        completion = finish_completion(
            adapter.chat_response(data), request_id=job.request_id, model=route.model,
            provider=route.provider, cost=cost,
        )
        await pub.send("result", _encode(completion),
                       meta={"provider": route.provider, "model": route.model, "usage": completion.get("usage")})
        return
    shaper = ChunkShaper(request_id=job.request_id, model=route.model, provider=route.provider,
                         include_usage=job.include_usage, cost=cost)
    translator = adapter.stream_translator()
    async with open_stream(runtime.http, adapter, spec) as events:
        async for name, data in events:
            for chunk in translator.feed(name, data):
                frames = shaper.shape(chunk)
                if frames:
                    pub.data(frames)
    for chunk in translator.close():
        frames = shaper.shape(chunk)
        if frames:
            pub.data(frames)
    pub.data(shaper.finish())
    await pub.send("done", meta={"provider": route.provider, "model": route.model, "usage": shaper.usage,
                                 "finish_reason": shaper.finish_reason})
