"""A client's request passed through to a provider that speaks its protocol: no lossy round trip through
the canonical shape. Anthropic Messages to Anthropic (here), Gemini ``generateContent`` to Gemini
(``native_gemini.py``).

The client's body goes as it came, but for what this model does not take (``shape_native``: the same
endpoint shape and output plan as the translated path and admission), with the upstream model id and the
client's ``anthropic-beta`` header (reduced to the values that may pass) forwarded; the answer comes back
byte for byte but for its ``model``, which is the id the client sent: Claude Code drops signed thinking
blocks from turns whose model differs from the one it asked for. The adapter's own translator still reads the stream alongside, for usage, for in-band
errors and to hold the first events back until real content arrives, so that a failure before the
first token is retried or handed to the next candidate exactly as on the canonical path.

Also ``count_tokens`` jobs: the provider's own exact count, or the local estimate if that call fails.
"""

from __future__ import annotations

from typing import Any

import msgspec

from common.wire import Job, Route
from router.auto import estimate_prompt_tokens
from router.forwarding import native_messages_body
from router.shaping import EndpointShape, OutputPlan, kind_shape
from workers.accounting import Progress
from workers.chunks import CostFn, add_cost
from workers import native_gemini
from workers.jobs import Answer, handler
from workers.providers.anthropic import messages_url, request_headers, usage_of
from workers.providers.base import RequestSpec, Upstream, UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_stream, send_json

_encode = msgspec.json.encode
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


NATIVE_KINDS = {"anthropic_messages": "anthropic", "gemini_generate": "gemini"}  # protocol -> provider kind


def speaks_natively(up: Upstream, job: Job) -> bool:
    return job.native is not None and NATIVE_KINDS.get(job.native.protocol) == up.kind


async def serve_native(runtime: Runtime, job: Job, route: Route, up: Upstream, pub: Publisher,
                       cost: CostFn | None, plan: OutputPlan) -> Answer:
    assert job.native is not None
    if job.native.protocol == "gemini_generate":
        return await native_gemini.serve_generate(runtime, job, route, up, pub, cost, plan)
    return await serve_messages(runtime, job, route, up, pub, cost, plan)


def _spec(up: Upstream, job: Job, payload: dict[str, Any], url: str) -> RequestSpec:
    headers = request_headers(up)  # auth and version, as the adapter sends them
    assert job.native is not None
    headers.update(job.native.headers)
    if payload.get("stream"):
        headers["accept"] = "text/event-stream"
    return RequestSpec("POST", url, headers=headers, content=_encode(payload))


def shape_native(shape: EndpointShape, payload: dict[str, Any], plan: OutputPlan) -> None:
    """A client's Messages body made what this Claude model takes, in place: the fields Anthropic documents
    only, the output cap and thinking budget of the request's plan (admission reserved for exactly these),
    no thinking for a model without it, no sampling it refuses."""
    for name in shape.drops:
        payload.pop(name, None)
    if shape.one_sampler and "temperature" in payload and "top_p" in payload:
        del payload["top_p"]
    if plan.cap is not None:
        payload["max_tokens"] = plan.cap
    thinking = payload.get("thinking")
    if not shape.reasoning:
        payload.pop("thinking", None)
        config = payload.get("output_config")
        if isinstance(config, dict) and "effort" in config:
            config = {k: v for k, v in config.items() if k != "effort"}
            if config:
                payload["output_config"] = config
            else:
                del payload["output_config"]
    elif isinstance(thinking, dict) and thinking.get("type") == "enabled":
        if shape.thinking == "adaptive":  # budgets are refused there: the model sizes its own thinking
            payload["thinking"] = {"type": "adaptive"}
        elif plan.budget is not None:
            payload["thinking"] = {**thinking, "budget_tokens": plan.budget}


async def serve_messages(runtime: Runtime, job: Job, route: Route, up: Upstream, pub: Publisher,
                         cost: CostFn | None, plan: OutputPlan) -> Answer:
    assert job.native is not None
    payload: dict[str, Any] = native_messages_body(msgspec.json.decode(job.native.body))
    echo = payload.get("model") or route.model  # the id the client sent, answered back as its model
    payload["model"] = route.upstream_model
    shape_native(up.shape or kind_shape(up.kind, up.provider), payload, plan)
    spec = _spec(up, job, payload, messages_url(up.base_url))
    adapter = runtime.adapter(route.provider)
    if not job.stream:
        data = await send_json(runtime.http, adapter, spec)
        usage = add_cost(adapter.chat_response(data).get("usage"), cost)  # raises for an error body
        data["model"] = echo
        return Answer("result", _encode(data), usage, fields={"native": True})
    translator = adapter.stream_translator()
    usage: dict[str, Any] | None = None
    held: list[bytes] = []  # events before the first content: not committed, so a retry stays possible
    pub.native = True
    progress = pub.progress = Progress(lambda: estimate_prompt_tokens(payload.get("messages") or [],
                                                                      payload.get("tools")), cost)
    async with open_stream(runtime.http, adapter, spec, runtime.stream_timeouts) as events:
        async for name, data in events:
            chunks = translator.feed(name, data)
            for chunk in chunks:
                usage = chunk.get("usage") or usage
                progress.see(chunk)
            if name == "message_start":  # the prompt's tokens, as Anthropic counts them: its bill if the client leaves
                progress.usage = usage_of(translator.usage_in[0], 0, translator.usage_in[1], translator.usage_in[2])
                start = msgspec.json.decode(data)
                start.get("message", {})["model"] = echo
                data = _encode(start).decode()
            held.append(b"event: " + (name or "message").encode() + b"\ndata: " + data.encode() + b"\n\n")
            if pub.committed or any(c.get("choices") for c in chunks):
                pub.data(b"".join(held))
                held.clear()
    translator.close()
    return Answer("done", b"".join(held), add_cost(usage, cost), fields={"native": True})


@handler("count_tokens")
async def serve_count_tokens(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    """The provider's exact count; the local estimate when it fails (the client asked for a number, and a
    count is never worth an error)."""
    assert job.native is not None
    up = runtime.upstream(route.provider)
    if job.native.protocol == "gemini_generate":
        return Answer("result", _encode(await native_gemini.count(runtime, job, route, up)), fields={"native": True})
    body = msgspec.json.decode(job.native.body)
    payload = {k: body[k] for k in COUNT_FIELDS if k in body}
    payload["model"] = route.upstream_model
    url = messages_url(up.base_url).rstrip("/") + "/count_tokens"
    try:
        data = await send_json(runtime.http, runtime.adapter(route.provider), _spec(up, job, payload, url))
        count = {"input_tokens": int(data["input_tokens"])}
    except (UpstreamError, KeyError, TypeError, ValueError):
        canonical = msgspec.json.decode(job.body)
        count = {"input_tokens": estimate_prompt_tokens(canonical.get("messages") or [], canonical.get("tools"))}
    return Answer("result", _encode(count), fields={"native": True})
