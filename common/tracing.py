"""OpenTelemetry traces: one trace per request, across the web tier, the queue and the worker pools.

Off unless the standard OTLP environment names an endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it
off). Off, nothing is imported and every hook is one ``is None`` test: requests pay nothing measurable.
On, the OpenTelemetry SDK exports over OTLP/HTTP (protobuf) in batches, configured by the ``OTEL_*``
variables as its documentation says (headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).

The shape of a trace (GenAI semantic conventions where they have a name):

- the web tier's span (SERVER, ``{operation} {model}``), from arrival to the response's end: admission,
  the routing decision (``megabrain.plan``), enqueue, pickup and queue wait, hand-offs, the first byte to
  the client, the outcome, tokens and cost. A client's ``traceparent`` header makes it a child of the
  client's trace.
- the job carries the web span's W3C context (``Job.trace``) through the queue; each worker that runs it
  opens a span under it (CONSUMER, one per hop: a fallback's next provider is a sibling under the request),
- and one CLIENT span per upstream attempt (provider, status, retry number), whose context the upstream
  call carries onward in its own ``traceparent`` header.

Never recorded: keys (no header is ever an attribute) and, unless the operator opts in with
``MEGABRAIN_TRACE_CONTENT=on``, prompts and completions.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("megabrain.tracing")

_tracer: Any = None  # the SDK's tracer once ``init_tracing`` turned tracing on; None: off
_propagator: Any = None
_provider: Any = None
_content = False  # MEGABRAIN_TRACE_CONTENT=on: prompts and completions may be recorded
CONTENT_LIMIT = 16_384  # characters of a prompt or completion kept on a span, when content is on

# the upstream attempt running in this task: its traceparent goes on the upstream call (workers/upstream.py)
_outgoing: contextvars.ContextVar[str | None] = contextvars.ContextVar("megabrain_traceparent", default=None)

OPERATIONS = {"chat": "chat", "embeddings": "embeddings", "transcription": "transcription",
              "count_tokens": "count_tokens"}


def configured(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint named, the SDK not disabled)."""
    if str(env.get("OTEL_SDK_DISABLED", "")).lower() == "true":
        return False
    if str(env.get("OTEL_TRACES_EXPORTER", "otlp")).lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def enabled() -> bool:
    return _tracer is not None


def init_tracing(env: Mapping[str, str], role: str) -> bool:
    """Start exporting traces for this process (``role``: web | worker | serve) if the environment asks.
    Idempotent; False when off. The SDK or the exporter missing is logged and leaves tracing off."""
    global _tracer, _propagator, _provider, _content
    if _tracer is not None:
        return True
    if not configured(env):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed (%s): no traces", exc)
        return False
    attributes: dict[str, str] = {"megabrain.role": role}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "megabrain-gateway"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("megabrain")
    _propagator = TraceContextTextMapPropagator()
    _content = str(env.get("MEGABRAIN_TRACE_CONTENT", "")).lower() in ("on", "1", "true", "yes")
    log.info("tracing on: spans exported over OTLP/HTTP (content %s)", "recorded" if _content else "not recorded")
    return True


def shutdown_tracing(timeout_ms: int = 5000) -> None:
    """Export what is buffered and stop (process exit, or a test that turned tracing on)."""
    global _tracer, _propagator, _provider
    provider, _provider, _tracer, _propagator = _provider, None, None, None
    if provider is not None:
        provider.force_flush(timeout_ms)
        provider.shutdown()


def content_on() -> bool:
    return _content


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


def _context(traceparent: str | None, tracestate: str | None = None) -> Any:
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


def _carrier(span: Any) -> str:
    """A span's W3C ``traceparent`` (what a job carries through the queue, and the upstream call gets)."""
    from opentelemetry import trace

    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def operation(kind: str) -> str:
    return OPERATIONS.get(kind, kind)


# --------------------------------------------------------------------------- the web tier


def start_request(headers: Mapping[str, str], route_name: str, request_id: str) -> Any:
    """The request's span, a child of the client's ``traceparent`` when it sent one; None when off."""
    if _tracer is None:
        return None
    parent = _context(headers.get("traceparent"), headers.get("tracestate"))
    return _tracer.start_span(f"request {route_name}", context=parent, kind=_kind("SERVER"),
                              attributes={"megabrain.route": route_name, "megabrain.request_id": request_id})


def traceparent(span: Any) -> str | None:
    """What a job carries so that its worker's span continues ``span``'s trace (None: not traced)."""
    return _carrier(span) if span is not None else None


def planned(span: Any, kind: str, model: str, plan: list[Any], key_id: str | None) -> None:
    """The routing decision: the model asked for and the candidates in order."""
    op = operation(kind)
    span.update_name(f"{op} {model}")
    span.set_attributes({
        "gen_ai.operation.name": op,
        "gen_ai.request.model": model,
        "megabrain.plan": [f"{route.provider}:{route.model}" for route in plan],
    })
    if key_id:
        span.set_attribute("megabrain.key_id", key_id)


def end_request(span: Any, *, status: int, provider: str | None, model: str, queue_ms: float | None,
                ttft: float | None, seconds: float, attempts: int, hop: int | None, stream: bool | None,
                usage: Mapping[str, Any] | None) -> None:
    """Close the request's span with what the client got."""
    attributes: dict[str, Any] = {"http.response.status_code": status, "megabrain.duration_ms": round(seconds * 1000, 3),
                                  "megabrain.attempts": attempts}
    if provider:
        attributes["gen_ai.provider.name"] = provider
        attributes["gen_ai.response.model"] = model
    if queue_ms is not None:
        attributes["megabrain.queue_ms"] = queue_ms
    if ttft is not None:
        attributes["megabrain.time_to_first_token_ms"] = round(ttft * 1000, 3)
    if hop is not None:
        attributes["megabrain.hop"] = hop
    if stream is not None:
        attributes["gen_ai.request.stream"] = stream
    _usage_attributes(attributes, usage)
    span.set_attributes(attributes)
    if status >= 400:
        _error(span, str(status))
    span.end()


# --------------------------------------------------------------------------- the workers


def start_job(job: Any, route: Any, worker: str, queued_ms: float | None) -> Any:
    """A worker's span for one job at one provider, under the request's span (``job.trace``)."""
    if _tracer is None or not job.trace:
        return None
    op = operation(job.kind)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": op, "gen_ai.request.model": route.model, "gen_ai.provider.name": route.provider,
        "megabrain.request_id": job.request_id, "megabrain.worker": worker, "megabrain.hop": job.hop,
        "megabrain.attempt": job.attempt, "gen_ai.request.stream": job.stream,
    }
    if queued_ms is not None:
        attributes["megabrain.queue_ms"] = queued_ms
    if _content and job.body:
        attributes["gen_ai.input.messages"] = _text(job.body)
    return _tracer.start_span(f"{op} {route.model}", context=_context(job.trace), kind=_kind("CONSUMER"),
                              attributes=attributes)


def job_event(span: Any, name: str, **attributes: Any) -> None:
    if span is not None:
        span.add_event(name, attributes={k: v for k, v in attributes.items() if v is not None})


def end_job(span: Any, error: str | None = None) -> None:
    if span is None:
        return
    if error:
        _error(span, error)
    span.end()


def start_attempt(job_span: Any, kind: str, route: Any, retry: int) -> tuple[Any, Any]:
    """One upstream attempt's span (CLIENT), made current for the upstream call's ``traceparent``.
    Returns (span, token) for ``end_attempt``; (None, None) when the job is not traced."""
    if job_span is None:
        return None, None
    from opentelemetry import trace

    op = operation(kind)
    span = _tracer.start_span(
        f"{op} {route.upstream_model}", context=trace.set_span_in_context(job_span), kind=_kind("CLIENT"),
        attributes={"gen_ai.operation.name": op, "gen_ai.request.model": route.model,
                    "gen_ai.provider.name": route.provider, "megabrain.upstream_model": route.upstream_model,
                    "megabrain.retry": retry})
    return span, _outgoing.set(_carrier(span))


def end_attempt(span: Any, token: Any, *, status: int, error: str | None = None, route: Any = None,
                usage: Mapping[str, Any] | None = None, finish_reason: str | None = None,
                output: bytes | None = None) -> None:
    if span is None:
        return
    _outgoing.reset(token)
    attributes: dict[str, Any] = {"http.response.status_code": status} if status else {}
    if error is None and route is not None:
        attributes["gen_ai.response.model"] = route.model
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    if _content and output:
        attributes["gen_ai.output.messages"] = _text(output)
    _usage_attributes(attributes, usage)
    span.set_attributes(attributes)
    if error is not None:
        _error(span, error)
    span.end()


def outgoing() -> str | None:
    """The running upstream attempt's ``traceparent`` for the upstream call (None: not traced)."""
    return _outgoing.get()


# --------------------------------------------------------------------------- helpers


def _usage_attributes(attributes: dict[str, Any], usage: Mapping[str, Any] | None) -> None:
    if not usage:
        return
    for source, name in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                         ("completion_tokens", "gen_ai.usage.output_tokens")):
        value = usage.get(source)
        if isinstance(value, int):
            attributes[name] = value
    cost = usage.get("cost")
    if cost is not None:
        try:
            attributes["gen_ai.usage.cost"] = float(cost)
        except (TypeError, ValueError):
            pass


def _error(span: Any, error_type: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def _text(data: bytes) -> str:
    return data[:CONTENT_LIMIT].decode("utf-8", "replace")
