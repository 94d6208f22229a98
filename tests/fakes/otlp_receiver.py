"""A local OTLP/HTTP trace receiver: what a collector (Jaeger, Tempo, Langfuse, Datadog's agent) does first.

Strict like a collector: only ``POST /v1/traces`` with ``Content-Type: application/x-protobuf``, a body that
decodes as an ``ExportTraceServiceRequest`` (a gzip'd one is inflated as ``Content-Encoding`` says);
anything else is refused with the status a collector gives. Every span received is kept as a ``Span``.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto, Status

KINDS = {SpanProto.SPAN_KIND_SERVER: "server", SpanProto.SPAN_KIND_CLIENT: "client",
         SpanProto.SPAN_KIND_CONSUMER: "consumer", SpanProto.SPAN_KIND_PRODUCER: "producer",
         SpanProto.SPAN_KIND_INTERNAL: "internal"}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    error: bool
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


@dataclass
class ReceiverState:
    spans: list[Span] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # statuses of requests refused
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


def create_receiver_app(state: ReceiverState) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, answer = _handle(state, scope["method"], scope["path"], headers, body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/x-protobuf")]})
        await send({"type": "http.response.body", "body": answer})

    return app


def _handle(state: ReceiverState, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    if path != "/v1/traces":
        status = 404
    elif method != "POST":
        status = 405
    elif headers.get("content-type", "").split(";")[0].strip() != "application/x-protobuf":
        status = 415
    else:
        try:
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
        except Exception:
            status = 400
        else:
            spans = list(_spans(request))
            with state.lock:
                state.spans.extend(spans)
            return 200, ExportTraceServiceResponse().SerializeToString()
    with state.lock:
        state.refused.append(status)
    return status, b""


def _spans(request: ExportTraceServiceRequest) -> Any:
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield Span(
                    name=span.name, kind=KINDS.get(span.kind, "unspecified"), trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                    attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    events=[(e.name, {kv.key: _value(kv.value) for kv in e.attributes}) for e in span.events],
                    error=span.status.code == Status.STATUS_CODE_ERROR, resource=resource,
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                )
