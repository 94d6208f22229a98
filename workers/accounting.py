"""What settles a job: the bill of a served request, or the release of a failed one (``common/settlement.py``).

Per API key (``job.meta['key_id']``), UTC day and model: requests, prompt/completion tokens and cost (layout
in common/usage.py), the same per account for a signed-in user's key (``job.meta['account']``), the cost
charged to that account's prepaid credits when admission held them (``job.meta['credit']``), and the
generation record a key looks up, all written by the script that publishes the answer. A failed request is
not charged: its reservation goes back and what the upstream did is counted as unbilled work for the
operator. Requests without a key are counted under the ``anonymous`` id, so operators can see what the free
tier serves (``megabrain keys usage anonymous``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import msgspec

from common.errors import GatewayError
from common.settlement import Settlement
from common.usage import ANONYMOUS, Generation, generation_encoder
from common.wire import Job, Route
from workers.runtime import Runtime


# Every keyed request of any kind gets a generation record (``GET /api/v1/generation?id=``; listed in a signed-in
# user's Activity), named by its answer's id: these kinds' prefix, or for answers without an id of their own
# (embeddings, transcriptions, images, speech, rerank, count_tokens) ``gen-`` + the ``x-request-id``.
ANSWER_IDS = {"chat": "chatcmpl-", "completion": "cmpl-", "moderation": "modr-"}


def bill(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any] | None, seconds: float = 0.0,
         finish_reason: str | None = None, ttft: float | None = None) -> Settlement:
    """The settlement of a served request: its tokens and cost for its key, day and model, and (any kind,
    with a key) its generation record."""
    key_id = str(job.meta.get("key_id") or ANONYMOUS)
    usage = usage or {}
    cost = _cost(usage.get("cost"))
    record = b""
    if key_id != ANONYMOUS:
        record = generation_encoder.encode(generation(runtime, job, route, usage, cost, seconds, finish_reason, ttft))
    return Settlement(
        request_id=job.request_id, attempt=job.attempt, key_id=key_id, model=route.model, deadline=job.deadline,
        prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
        cost=cost, reserved=job.reserved, generation=record, account=str(job.meta.get("account") or ""),
        credit=str(job.meta.get("credit") or ""),
    )


def failed(job: Job, usage: dict[str, Any] | None = None, *, runtime: Runtime | None = None,
           error: GatewayError | None = None) -> Settlement:
    """The settlement of a request its client gets an error for: nothing charged, the reservation returned,
    and what is known of the upstream's work (``usage``) counted as unbilled. With the ``error`` the client
    is told, a request of a signed-in user's key (any kind) gets a record of it, listed in the account's Activity."""
    usage = usage or {}
    account = str(job.meta.get("account") or "")
    record = b""
    if error is not None and runtime is not None and account:
        route = job.plan[job.hop]
        entry = generation(runtime, job, route, {}, "0", 0.0)
        record = generation_encoder.encode(msgspec.structs.replace(entry, status=error.status,
                                                                   error_type=error.error_type))
    return Settlement(
        request_id=job.request_id, attempt=job.attempt, key_id=str(job.meta.get("key_id") or ANONYMOUS),
        model=job.plan[job.hop].model, deadline=job.deadline, outcome="failed",
        prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
        cost=_cost(usage.get("cost")), reserved=job.reserved, generation=record, account=account,
        credit=str(job.meta.get("credit") or ""),
    )


@dataclass
class Progress:
    """What a stream's upstream has done so far, for the bill of a stream its client leaves (``abandoned``):
    the latest usage the upstream reported (Anthropic reports the prompt at the start, Gemini the running
    totals on every chunk, OpenAI-compatible upstreams only at the end) and the characters generated since
    (answer, reasoning, tool calls). Fed by the stream handlers, chunk by chunk; cheap enough for every one."""

    prompt_estimate: Callable[[], int] = lambda: 0  # the request's prompt, estimated when nothing reported it
    cost: Callable[[dict[str, Any]], Any] | None = None  # the catalog's prices (``workers/chunks.CostFn``)
    usage: dict[str, Any] | None = None
    chars: int = 0
    started: float = field(default_factory=time.monotonic)

    def see(self, chunk: dict[str, Any]) -> None:
        """One canonical chunk (``choices[].delta``, ``usage``)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str):
                    self.chars += len(delta[name])
            reasoning = delta.get("reasoning")  # (the canonical copy of a vendor's reasoning_content, if any)
            if not isinstance(reasoning, str):
                reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str):
                self.chars += len(reasoning)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self.chars += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))

    def so_far(self) -> dict[str, Any]:
        """The usage to bill: what the upstream reported, raised to the estimate of what it streamed (4
        characters a token, as the prompt estimate counts), the prompt estimated if it reported none."""
        reported = self.usage or {}
        usage = {"prompt_tokens": _count(reported.get("prompt_tokens")) or self.prompt_estimate(),
                 "completion_tokens": max(_count(reported.get("completion_tokens")), math.ceil(self.chars / 4))}
        for name in ("prompt_tokens_details", "completion_tokens_details"):
            if isinstance(reported.get(name), dict):
                usage[name] = reported[name]
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if self.cost is not None:
            usage["cost"] = self.cost(usage)
        return usage


def abandoned(runtime: Runtime, job: Job, route: Route, progress: Progress) -> Settlement:
    """The settlement of a stream its client left mid-way: billed, like an answer, for what its upstream did
    until the worker stopped it (``Progress.so_far``); its generation record says ``abandoned``."""
    return bill(runtime, job, route, progress.so_far(), time.monotonic() - progress.started, "abandoned")


def generation(runtime: Runtime, job: Job, route: Route, usage: dict[str, Any], cost: str,
               seconds: float, finish_reason: str | None = None, ttft: float | None = None) -> Generation:
    model = runtime.catalog.get(route.model)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Generation(
        id=f"{ANSWER_IDS.get(job.kind, 'gen-')}{job.request_id}", key_id=str(job.meta.get("key_id")), model=route.model,
        canonical=model.slug if model is not None else route.model, provider=route.provider,
        created=time.time(), prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cached_tokens=_count(prompt_details.get("cached_tokens")),
        cache_write_tokens=_count(prompt_details.get("cache_write_tokens")),
        reasoning_tokens=_count(completion_details.get("reasoning_tokens")), cost=cost,
        latency_ms=round(seconds * 1000), finish_reason=finish_reason, streamed=job.stream,
        upstream_model=route.upstream_model, ttft_ms=round(ttft * 1000) if ttft is not None else None,
    )


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _cost(value: Any) -> str:
    """A decimal string Redis' INCRBYFLOAT accepts; anything unparsable or negative counts as zero."""
    try:
        cost = Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return "0"
    if not cost.is_finite() or cost < 0:
        return "0"
    return format(cost, "f")
