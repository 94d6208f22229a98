"""One legacy text completion (``/completions``) at one provider: non-streaming or streaming.

The client's body goes on nearly as sent (``prompt``, ``suffix``, ``echo``, ``logprobs``…); a stream
always asks the upstream for usage, since the request is billed from it, and the usage chunk reaches the
client only when it asked (``stream_options.include_usage``). Every answer is stamped with our id, the
model and provider that served it and its cost, as chat answers are (``workers/chunks.py``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec

from common.wire import Job, Route
from workers.chat import cost_fn
from workers.chunks import DONE_FRAME, CostFn, add_cost, encode_json, frame
from workers.jobs import Answer, handler
from workers.providers.base import UpstreamError
from workers.publisher import Publisher
from workers.runtime import Runtime
from workers.upstream import open_stream, send_json


def stamp(data: dict[str, Any], request_id: str, route: Route, created: int | None = None) -> dict[str, Any]:
    """Our id, object, model and provider on a ``text_completion`` body or chunk."""
    data["id"] = f"cmpl-{request_id}"
    data["object"] = "text_completion"
    data["created"] = created if created is not None else data.get("created") or int(time.time())
    data["model"] = route.model
    data["provider"] = route.provider
    return data


def checked(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        if isinstance(data, dict) and data.get("error"):
            raise UpstreamError(502, f"upstream error: {data['error']}", retryable=True)
        raise UpstreamError(502, "upstream returned a completion without choices", retryable=True)
    return data


class CompletionStream:
    """The client's frames of one streamed completion; usage is kept for the bill and sent if asked."""

    def __init__(self, job: Job, route: Route, cost: CostFn | None,
                 translate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.job, self.route, self.cost, self.translate = job, route, cost, translate
        self.created = int(time.time())
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.finished = False

    def shape(self, data: str) -> bytes:
        if data == "[DONE]":
            self.finished = True
            return b""
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream sent a malformed stream chunk", retryable=True) from None
        if not isinstance(chunk, dict):
            return b""
        if chunk.get("error"):
            raise UpstreamError(502, f"upstream error in the stream: {chunk['error']}", retryable=True)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk.pop("usage")
        else:
            chunk.pop("usage", None)
        chunk = self.translate(chunk)
        choices = chunk.get("choices")
        if not choices:
            return b""  # the usage chunk: sent at the end, if asked
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return frame(stamp(chunk, self.job.request_id, self.route, self.created))

    def finish(self) -> bytes:
        if not (self.finished or self.finish_reason):
            raise UpstreamError(502, "upstream stream ended before it finished", retryable=True)
        add_cost(self.usage, self.cost)
        out = b""
        if self.job.include_usage and self.usage:
            out = frame(stamp({"choices": [], "usage": self.usage}, self.job.request_id, self.route, self.created))
        return out + DONE_FRAME


@handler("completion")
async def serve_completion(runtime: Runtime, job: Job, route: Route, pub: Publisher) -> Answer:
    adapter = runtime.adapter(route.provider)
    if not hasattr(adapter, "completions_request"):
        raise UpstreamError(400, f"the provider {route.provider} serves no /completions", retryable=False,
                            fallback=True, error_type="invalid_request", param="model")
    body: dict[str, Any] = msgspec.json.decode(job.body)
    upstream = runtime.upstream(route.provider)
    spec = adapter.completions_request(upstream, route.upstream_model, body, job.stream)
    cost = cost_fn(runtime, route.model)
    translate = functools.partial(adapter.completion_answer, upstream)
    if not job.stream:
        data = stamp(translate(checked(await send_json(runtime.http, adapter, spec))), job.request_id, route)
        add_cost(data.get("usage"), cost)
        choices = data["choices"]
        reason = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
        return Answer("result", encode_json(data), data.get("usage"), reason)
    shaper = CompletionStream(job, route, cost, translate)
    async with open_stream(runtime.http, adapter, spec, runtime.stream_timeouts) as events:
        async for _, data in events:
            frames = shaper.shape(data)
            if frames:
                pub.data(frames)
    return Answer("done", shaper.finish(), shaper.usage, shaper.finish_reason)
