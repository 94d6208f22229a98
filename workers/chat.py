"""One attempt at a chat completion at one provider: non-streaming or streaming."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from common.wire import Job, Route
from router.auto import estimate_prompt_tokens
from router.shaping import EndpointShape, OutputPlan, asked_cap, kind_shape, output_plan, shape_request
from workers import native
from workers.accounting import Progress
from workers.chunks import ChunkShaper, CostFn, encode_json, finish_completion
from workers.jobs import Answer, handler
from workers.providers.base import Upstream
from workers.providers.reasoning import excluded
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_stream, send_json



def cost_fn(runtime: Runtime, model_id: str) -> CostFn | None:
    """USD cost of a request from the catalog's per-token prices, or None for unpriced models."""
    model = runtime.catalog.get(model_id)
    if model is None or not model.listed:
        return None
    catalog = runtime.catalog
    return lambda usage: catalog.cost(model, usage)


def upstream_for(runtime: Runtime, route: Route, job: Job | None = None) -> Upstream:
    """The provider's connection for this request: what the serving endpoint takes, and the client's
    ``anthropic-beta`` header (already reduced to the values that may pass, by the web tier)."""
    upstream = runtime.upstream(route.provider)
    model = runtime.catalog.get(route.model)
    shape = runtime.catalog.shape(model) if model is not None else kind_shape(upstream.kind, upstream.provider)
    headers = {"anthropic-beta": job.anthropic_beta} if job is not None and job.anthropic_beta else {}
    return dataclasses.replace(upstream, shape=shape, client_headers=headers)


def plan_output(runtime: Runtime, shape: EndpointShape, body: dict[str, Any], job: Job,
                shape_body: bool = True) -> OutputPlan:
    """Shape the canonical body for this endpoint (``router/shaping.py``) and return its output plan.

    The prompt is estimated only where a default cap clipped to the context needs it. A budgeted request
    (``job.reserved``) to a model whose output limit is unknown is sent the cap admission reserved for.
    """
    prompt = 0
    if shape.requires_cap and shape.context_length and asked_cap(body) is None:
        prompt = estimate_prompt_tokens(body.get("messages") or [], body.get("tools"))
    default = runtime.settings.default_max_tokens if job.reserved and not shape.output_limit else None
    if not shape_body:
        return output_plan(shape, body, prompt, default)
    return shape_request(shape, body, prompt_tokens=prompt, reserved_default=default,
                         cache_control=b"cache_control" in job.body)


@handler("chat")
async def serve_chat(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    body: dict[str, Any] = msgspec.json.decode(job.body)
    upstream = upstream_for(runtime, route, job)
    assert upstream.shape is not None
    cost = cost_fn(runtime, route.model)
    if native.speaks_natively(upstream, job):
        plan = plan_output(runtime, upstream.shape, body, job, shape_body=False)
        return await native.serve_native(runtime, job, route, upstream, pub, cost, plan)
    plan_output(runtime, upstream.shape, body, job)
    spec = adapter.chat_request(upstream, route.upstream_model, body, job.stream)
    request = {**body, "model": route.upstream_model}  # what the answer is translated against
    exclude = excluded(body)
    if not job.stream:
        data = await send_json(runtime.http, adapter, spec)
        completion = finish_completion(
            adapter.chat_response(data, request), request_id=job.request_id, model=route.model,
            provider=route.provider, cost=cost, exclude_reasoning=exclude,
        )
        choices = completion.get("choices") or [{}]
        reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
        return Answer("result", encode_json(completion), completion.get("usage"), reason)
    shaper = ChunkShaper(request_id=job.request_id, model=route.model, provider=route.provider,
                         include_usage=job.include_usage, cost=cost, exclude_reasoning=exclude)
    translator = adapter.stream_translator(request)
    progress = pub.progress = Progress(lambda: estimate_prompt_tokens(body.get("messages") or [], body.get("tools")),
                                       cost)
    async with open_stream(runtime.http, adapter, spec, runtime.stream_timeouts) as events:
        async for name, data in events:
            for chunk in translator.feed(name, data):
                progress.see(chunk)  # before the shaper, which takes the usage out
                frames = shaper.shape(chunk)
                if frames:
                    pub.data(frames)
    for chunk in translator.close():
        frames = shaper.shape(chunk)
        if frames:
            pub.data(frames)
    # the closing frames (usage chunk if asked, [DONE]) travel with the "done" event itself
    return Answer("done", shaper.finish(), shaper.usage, shaper.finish_reason)
