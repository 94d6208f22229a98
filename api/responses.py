"""Turning a request's events into HTTP responses: one JSON body, or Server-Sent Events.

A stream holds its status line for up to ``stream_commit_wait`` seconds: an error before the first token
then still gets its proper HTTP status (the SDKs raise the right exception), and the first frames go out
with the headers. If nothing comes by then, the headers and a keep-alive comment go out so proxies (the
Heroku router wants a first byte within 30 s) keep the connection open; comments then repeat every
``keepalive_interval``. A stream ends in exactly one of two ways: ``data: [DONE]`` after the finish, or an
in-band ``data: {"error": ...}`` frame.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response, StreamingResponse

from api import observe
from api.exchange import Exchange
from common.errors import GatewayError
from common.wire import Event

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}
KEEPALIVE = b": keep-alive\n\n"
CLIENT_GONE = 499  # logged only: the connection is already closed
CLIENT_CHECK_EVERY = 1.0  # seconds between "is the client still there?" checks while waiting

ClientGone = Callable[[], Awaitable[bool]]  # e.g. Request.is_disconnected


def _observe(exchange: Exchange, status: int, event: Event | None = None) -> None:
    if not exchange.observed:
        exchange.observed = True
        observe.finished(exchange, status, event.meta.get("usage") if event else None)


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error.body(), status_code=error.status, media_type="application/json",
        headers={**error.response_headers(), **(headers or {})},
    )


def event_error_response(event: Event, headers: dict[str, str]) -> Response:
    extra = dict(headers)
    retry_after = event.meta.get("retry_after")
    if retry_after is not None:
        extra["retry-after"] = str(max(1, int(retry_after + 0.999)))
    return Response(event.data, status_code=event.status, media_type="application/json", headers=extra)


def served_headers(exchange: Exchange, event: Event | None, base: dict[str, str]) -> dict[str, str]:
    headers = dict(base)
    provider = (event.meta.get("provider") if event else None) or exchange.provider
    if provider:
        headers["x-megabrain-provider"] = provider
    usage = event.meta.get("usage") if event else None
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
PADDED_ROUTES = ("chat", "embeddings")


async def json_response(exchange: Exchange, headers: dict[str, str], release: Callable[[], None],
                        gone: ClientGone | None = None) -> Response:
    """Wait for the one result (or error) of a non-streaming request.

    Every ``CLIENT_CHECK_EVERY`` seconds without an answer, ``gone`` is asked whether the client left
    (Starlette does not cancel a handler whose client hung up); if so, the job is withdrawn or stopped.
    """
    settings = exchange.gateway.settings
    pad = exchange.route_name in PADDED_ROUTES
    until = time.monotonic() + (JSON_KEEPALIVE_AFTER if pad else settings.request_timeout)
    handed_over = False
    try:
        while (remaining := until - time.monotonic()) > 0 or not pad:
            event = await exchange.next_event(min(CLIENT_CHECK_EVERY, max(0.0, remaining)))
            if event is None:
                if gone is not None and await gone():
                    return Response(status_code=CLIENT_GONE)  # nobody reads it; finally stops the work
                continue
            if event.kind == "result":
                exchange.first_byte_at = time.monotonic()
                _observe(exchange, 200, event)
                return Response(event.data, media_type=event.meta.get("content_type", "application/json"),
                                headers=served_headers(exchange, event, headers))
            if event.kind == "error":
                _observe(exchange, event.status)
                return event_error_response(event, served_headers(exchange, None, headers))
        handed_over = True
        return StreamingResponse(_padded_json(exchange, release), media_type="application/json",
                                 headers=served_headers(exchange, None, headers))
    except GatewayError as error:
        _observe(exchange, error.status)
        return error_response(error, headers)
    finally:
        if not handed_over:
            _observe(exchange, CLIENT_GONE)  # no-op unless the client left before the answer
            release()
            if not exchange.finished:  # the client went away
                await asyncio.shield(exchange.cancel())


async def _padded_json(exchange: Exchange, release: Callable[[], None]) -> AsyncIterator[bytes]:
    """Spaces while the answer is pending, then the JSON body (or the error envelope)."""
    status = CLIENT_GONE
    try:
        yield b" "
        while True:
            try:
                event = await exchange.next_event(JSON_KEEPALIVE_EVERY)
            except GatewayError as error:
                status = error.status
                yield error.body()
                return
            if event is None:
                yield b" "
            elif event.kind == "result":
                exchange.first_byte_at = time.monotonic()
                status = 200
                _observe(exchange, 200, event)
                yield event.data
                return
            elif event.kind == "error":
                status = event.status
                yield event.data
                return
    finally:
        _observe(exchange, status)
        release()
        if not exchange.finished:
            await asyncio.shield(exchange.cancel())


async def stream_response(exchange: Exchange, headers: dict[str, str], release: Callable[[], None],
                          gone: ClientGone | None = None) -> Response:
    settings = exchange.gateway.settings
    first: list[bytes] = []
    commit_by = time.monotonic() + settings.stream_commit_wait
    last_event: Event | None = None
    try:
        while (remaining := commit_by - time.monotonic()) > 0:
            event = await exchange.next_event(min(CLIENT_CHECK_EVERY, remaining))
            if event is None:
                if gone is not None and await gone():
                    release()
                    _observe(exchange, CLIENT_GONE)
                    await asyncio.shield(exchange.cancel())
                    return Response(status_code=CLIENT_GONE)
                continue
            last_event = event
            if event.kind == "error":
                release()
                _observe(exchange, event.status)
                return event_error_response(event, served_headers(exchange, None, headers))
            first.append(event.data)
            break  # data (or done): commit now, the rest follows in the body
    except GatewayError as error:
        release()
        await asyncio.shield(exchange.cancel())
        _observe(exchange, error.status)
        return error_response(error, headers)
    except BaseException:
        release()
        _observe(exchange, CLIENT_GONE)
        await asyncio.shield(exchange.cancel())
        raise
    if not first:
        first.append(KEEPALIVE)
    done = last_event is not None and last_event.kind == "done"
    return StreamingResponse(
        _frames(exchange, first, done, release),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **served_headers(exchange, last_event, headers)},
    )


async def _frames(
    exchange: Exchange, first: list[bytes], done: bool, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    settings = exchange.gateway.settings
    status = 200
    last: Event | None = None
    try:
        for chunk in first:
            if chunk is not KEEPALIVE and not exchange.client_sent:
                exchange.client_sent = True
                exchange.first_byte_at = time.monotonic()
            yield chunk
        while not done:
            try:
                event = await exchange.next_event(settings.keepalive_interval)
            except GatewayError as error:
                status = error.status
                yield b"data: " + error.body() + b"\n\n"
                return
            if event is None:
                yield KEEPALIVE
                continue
            if event.kind == "error":
                status = event.status
                yield b"data: " + event.data + b"\n\n"
                return
            if not exchange.client_sent:
                exchange.client_sent = True
                exchange.first_byte_at = time.monotonic()
            last = event
            yield event.data
            done = event.kind == "done"
    finally:
        _observe(exchange, status if exchange.finished else CLIENT_GONE, last)
        release()
        if not exchange.finished:
            # the client went away mid-stream: stop the worker and the upstream
            await asyncio.shield(exchange.cancel())
