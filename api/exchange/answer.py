"""Turning a request's events into HTTP responses: one JSON body, or Server-Sent Events.

This module only writes bytes: the wire format (``api/formats/``) says which bytes, and the exchange
(``api/exchange/exchange.py``) owns the request's end. Every response ends in ``exchange.finish``, run once by
the response object itself when the ASGI server is done with it, whichever way that happens.

A stream holds its status line for up to ``stream_commit_wait`` seconds: an error before the first token
then still gets its proper HTTP status (the SDKs raise the right exception), and the first frames go out
with the headers. If nothing comes by then, the headers and a keep-alive comment go out so proxies (the
Heroku router wants a first byte within 30 s) keep the connection open; comments then repeat every
``keepalive_interval``. A stream ends in exactly one of two ways: its format's proper end after the
finish, or the format's in-band error event.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api.exchange.exchange import CLIENT_GONE, Exchange
from api.formats import StreamEncoder, WireFormat
from common.errors import GatewayError
from common.wire import Event

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}
KEEPALIVE = b": keep-alive\n\n"
CLIENT_CHECK_EVERY = 1.0  # seconds between "is the client still there?" checks while waiting

ClientGone = Callable[[], Awaitable[bool]]  # e.g. Request.is_disconnected


class Finishing:
    """Mixin: the response finishes its exchange once the ASGI server is done with it (sent, failed or
    cancelled), so no exit path can skip or repeat the request's end."""

    exchange: Exchange

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            await self.exchange.finish()


class FinishingResponse(Finishing, Response):
    def __init__(self, exchange: Exchange, content: bytes, status: int, headers: dict[str, str],
                 media_type: str = "application/json") -> None:
        super().__init__(content, status_code=status, media_type=media_type, headers=headers)
        self.exchange = exchange
        exchange.record(status)


class FinishingStream(Finishing, StreamingResponse):
    def __init__(self, exchange: Exchange, body: AsyncIterator[bytes], headers: dict[str, str],
                 media_type: str) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self.exchange = exchange


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """A refusal outside any request's life (unknown route, unexpected error)."""
    return Response(
        error.body(), status_code=error.status, media_type="application/json",
        headers={**error.response_headers(), **(headers or {})},
    )


def refusal(exchange: Exchange, fmt: WireFormat, error: GatewayError, headers: dict[str, str]) -> Response:
    return FinishingResponse(exchange, fmt.error_body(error.status, error.body()), error.status,
                             {**error.response_headers(), **headers})


def _event_error(exchange: Exchange, fmt: WireFormat, event: Event, headers: dict[str, str]) -> Response:
    extra = served_headers(exchange, None, headers)
    if event.retry_after is not None:
        extra["retry-after"] = str(max(1, int(event.retry_after + 0.999)))
    return FinishingResponse(exchange, fmt.error_body(event.status, event.data), event.status, extra)


def served_headers(exchange: Exchange, usage: dict[str, Any] | None, base: dict[str, str]) -> dict[str, str]:
    headers = dict(base)
    if exchange.provider:
        headers["x-megabrain-provider"] = exchange.provider
    if isinstance(usage, dict) and usage.get("cost") is not None:
        headers["x-megabrain-cost"] = str(usage["cost"])  # streams carry it in their usage chunk
    return headers


# A non-streaming answer that takes longer than this gets its status line (200) and then a space every
# JSON_KEEPALIVE_EVERY seconds until the body: the Heroku router drops a request whose first byte takes
# over 30 s, and JSON parsers skip leading whitespace. An error that arrives after that point can no
# longer change the status: its error envelope becomes the (200) body. The OpenAI Python SDK then
# returns an object without ``choices`` whose ``error`` attribute holds the error (it raises nothing), so
# clients of very slow non-streaming requests should check for ``error``, or stream. Only JSON answers are
# padded (a plain-text transcription is not).
JSON_KEEPALIVE_AFTER = float(os.environ.get("MEGABRAIN_JSON_KEEPALIVE_AFTER", "20"))
JSON_KEEPALIVE_EVERY = 10.0
UNPADDED_ROUTES = ("transcriptions",)


async def json_response(exchange: Exchange, fmt: WireFormat, headers: dict[str, str],
                        gone: ClientGone | None = None) -> Response:
    """Wait for the one result (or error) of a non-streaming request.

    Every ``CLIENT_CHECK_EVERY`` seconds without an answer, ``gone`` is asked whether the client left
    (Starlette does not cancel a handler whose client hung up); if so, the job is withdrawn or stopped.
    """
    settings = exchange.gateway.settings
    pad = exchange.route_name not in UNPADDED_ROUTES
    until = time.monotonic() + (JSON_KEEPALIVE_AFTER if pad else settings.request_timeout)
    try:
        while (remaining := until - time.monotonic()) > 0 or not pad:
            event = await exchange.next_event(min(CLIENT_CHECK_EVERY, max(0.0, remaining)))
            if event is None:
                if gone is not None and await gone():
                    await exchange.finish(CLIENT_GONE)  # nobody reads it; stop the work
                    return Response(status_code=CLIENT_GONE)
                continue
            if event.kind == "result":
                body = fmt.result(event)
                await exchange.kept()
                exchange.sent()
                exchange.record(200, event.usage)
                return FinishingResponse(exchange, body, 200,
                                         served_headers(exchange, event.usage, headers),
                                         media_type=event.content_type or "application/json")
            if event.kind == "error":
                return _event_error(exchange, fmt, event, headers)
    except GatewayError as error:
        return refusal(exchange, fmt, error, headers)
    except BaseException:
        await exchange.finish(CLIENT_GONE)
        raise
    return FinishingStream(exchange, _padded_json(exchange, fmt), served_headers(exchange, None, headers),
                           "application/json")


async def _padded_json(exchange: Exchange, fmt: WireFormat) -> AsyncIterator[bytes]:
    """Spaces while the answer is pending, then the JSON body (or the error envelope)."""
    yield b" "
    while True:
        try:
            event = await exchange.next_event(JSON_KEEPALIVE_EVERY)
        except GatewayError as error:
            exchange.record(error.status)
            yield fmt.error_body(error.status, error.body())
            return
        if event is None:
            yield b" "
        elif event.kind == "result":
            body = fmt.result(event)
            await exchange.kept()
            exchange.sent()
            exchange.record(200, event.usage)
            yield body
            return
        elif event.kind == "error":
            exchange.record(event.status)
            yield fmt.error_body(event.status, event.data)
            return


async def stream_response(exchange: Exchange, fmt: WireFormat, headers: dict[str, str],
                          gone: ClientGone | None = None) -> Response:
    settings = exchange.gateway.settings
    encoder = fmt.stream()
    first = b""
    # A format may name its own (``api/formats/raw_body.py``: an audio body holds its status as long as a
    # non-streaming answer does, and goes out under its own content type).
    commit_wait = getattr(fmt, "commit_wait", None)
    commit_by = time.monotonic() + (settings.stream_commit_wait if commit_wait is None else commit_wait)
    done = False
    try:
        while (remaining := commit_by - time.monotonic()) > 0:
            event = await exchange.next_event(min(CLIENT_CHECK_EVERY, remaining))
            if event is None:
                if gone is not None and await gone():
                    await exchange.finish(CLIENT_GONE)
                    return Response(status_code=CLIENT_GONE)
                continue
            if event.kind == "error":
                return _event_error(exchange, fmt, event, headers)
            first = encoder.frames(event)  # data (or done): commit now, the rest follows in the body
            done = event.kind == "done"
            if done:
                await exchange.kept()
                exchange.record(200, event.usage)
            break
    except GatewayError as error:
        return refusal(exchange, fmt, error, headers)
    except BaseException:
        await exchange.finish(CLIENT_GONE)
        raise
    return FinishingStream(
        exchange, _frames(exchange, encoder, first, done),
        {**SSE_HEADERS, **served_headers(exchange, exchange.usage, headers)},
        getattr(fmt, "media_type", "text/event-stream"),
    )


async def _frames(exchange: Exchange, encoder: StreamEncoder, first: bytes, done: bool) -> AsyncIterator[bytes]:
    settings = exchange.gateway.settings
    # A format whose clients choke on SSE comments names its own filler (Gemini's SDKs: a blank line).
    keepalive: bytes = getattr(encoder, "keepalive", KEEPALIVE)
    if first:
        exchange.sent()
    yield first or keepalive
    while not done:
        try:
            event = await exchange.next_event(settings.keepalive_interval)
        except GatewayError as error:
            exchange.record(error.status)
            yield encoder.error(error.status, error.body())
            return
        if event is None:
            yield keepalive
            continue
        if event.kind == "error":
            exchange.record(event.status)
            yield encoder.error(event.status, event.data)
            return
        frames = encoder.frames(event)
        done = event.kind == "done"
        if done:
            await exchange.kept()
            exchange.record(200, event.usage)
        exchange.sent()
        yield frames
