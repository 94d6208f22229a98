"""One attempt at a chat completion at one provider: non-streaming or streaming."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from common.wire import Job, Route
from router.auto import estimate_prompt_tokens
from workers import native
from workers.chunks import ChunkShaper, CostFn, encode_json, finish_completion
from workers.jobs import handler
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


def upstream_for(runtime: Runtime, route: Route, body: dict[str, Any], job: Job | None = None) -> Upstream:
    """The provider's connection, with ``max_tokens`` defaulting to this model's own output limit.

    Providers that require ``max_tokens`` (Anthropic) get the model's maximum output, clipped so prompt
    plus output fits the context window, instead of a fixed number that truncates long answers.
    """
    upstream = runtime.upstream(route.provider)
    if job is not None and job.anthropic_beta:
        upstream = dataclasses.replace(upstream, client_headers={"anthropic-beta": job.anthropic_beta})
    model = runtime.catalog.get(route.model)
    if model is None or not model.max_output_tokens:
        return upstream
    limit = model.max_output_tokens
    if model.context_length:
        prompt = estimate_prompt_tokens(body.get("messages") or [], body.get("tools"))
        limit = max(256, min(limit, model.context_length - prompt))
    return dataclasses.replace(upstream, default_max_tokens=limit)


def output_limit(runtime: Runtime, route: Route) -> int | None:
    model = runtime.catalog.get(route.model)
    return model.max_output_tokens if model is not None else None


def clip_output(body: dict[str, Any], limit: int | None) -> None:
    """A client's output budget above the serving model's limit (Claude Code asks 32,000 of every model;
    gpt-4o-mini allows 16,384) is clipped to that limit rather than refused by the upstream."""
    if not limit:
        return
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > limit:
            body[name] = limit


@handler("chat")
async def serve_chat(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> dict[str, Any] | None:
    adapter = runtime.adapter(route.provider)
    body: dict[str, Any] = msgspec.json.decode(job.body)
    upstream = upstream_for(runtime, route, body, job)
    cost = cost_fn(runtime, route.model)
    limit = output_limit(runtime, route)
    if native.speaks_natively(upstream, job):
        return await native.serve_messages(runtime, job, route, upstream, pub, cost, limit)
    clip_output(body, limit)
    spec = adapter.chat_request(upstream, route.upstream_model, body, job.stream)
    request = {**body, "model": route.upstream_model}  # what the answer is translated against
    exclude = excluded(body)
    if not job.stream:
        data = await send_json(runtime.http, adapter, spec)
        completion = finish_completion(
            adapter.chat_response(data, request), request_id=job.request_id, model=route.model,
            provider=route.provider, cost=cost, exclude_reasoning=exclude,
        )
        usage = completion.get("usage")
        await pub.send("result", encode_json(completion), usage=usage)
        choices = completion.get("choices") or [{}]
        return _served(usage, choices[0].get("finish_reason") if isinstance(choices[0], dict) else None)
    shaper = ChunkShaper(request_id=job.request_id, model=route.model, provider=route.provider,
                         include_usage=job.include_usage, cost=cost, exclude_reasoning=exclude)
    translator = adapter.stream_translator(request)
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
    # the closing frames (usage chunk if asked, [DONE]) travel with the "done" event itself
    await pub.send("done", shaper.finish(), usage=shaper.usage)
    return _served(shaper.usage, shaper.finish_reason)


def _served(usage: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
    """What accounting keeps of a served answer: its usage and why it ended (for the generation record)."""
    return {**(usage or {}), "finish_reason": finish_reason}
