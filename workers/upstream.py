"""Sending requests upstream: one shared aiohttp session per worker process, and an SSE reader.

aiohttp is used directly, not under httpx: httpx's own layer over it (request and header objects, its
response streams and auth flow) was 12-15 % of a worker's CPU at 16-token answers.

Transport failures become ``UpstreamError`` here, so the retry logic only ever sees one exception type.
HTTP errors are classified by the provider's own adapter (``Adapter.error``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import msgspec
import yarl

from common import tracing
from common.settings import Settings
from workers.providers.base import Adapter, RequestSpec, UpstreamError, malformed
from workers.sse import Event, SSEDecoder

# How long a request may wait for a free connection of the pool, on top of connecting: the pool holds one
# connection per job slot, so waiting at all means connections leak, and a job should fail, not hang.
POOL_WAIT = 10.0

# What a failed exchange with an upstream raises: aiohttp's errors (its timeouts are TimeoutErrors too).
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """A stream's own bounds: its response headers within ``first_byte`` seconds (a provider that accepts
    and never answers costs that, then the next provider), then at most ``idle`` seconds between reads.
    A non-streamed answer has only the session's read timeout: its first byte is its end."""

    first_byte: float
    idle: float

    @classmethod
    def of(cls, settings: Settings) -> "StreamTimeouts":
        return cls(settings.upstream_first_byte_timeout, settings.upstream_idle_timeout)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A whole upstream answer: what the callers read of it, and nothing they would have to close."""

    status_code: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    content: bytes


def make_http_client(settings: Settings, max_connections: int = 200) -> aiohttp.ClientSession:
    """The process-wide session: pooled HTTP/1.1 keep-alive connections and explicit timeouts.

    Call it inside the running event loop (aiohttp binds the session to it); ``PoolProcess`` is built there.
    ``sock_read`` bounds the gap between two reads of a response (a stalled stream), not the whole call; the
    whole call is bounded by the request's deadline. TLS is verified against the default CA store. No
    cookie jar: one session serves every caller, so a provider's ``Set-Cookie`` (a load balancer's affinity
    cookie, say) must not ride along on someone else's request. ``trust_env=False``: no proxy or netrc from
    the environment.
    """
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=POOL_WAIT + settings.upstream_connect_timeout,
        sock_connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_read_timeout,
    )
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=60.0)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                 trust_env=False)


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> yarl.URL:
    """Upstream URLs repeat (one per provider, or per model): parse each once, not per request. They are
    encoded already (``RequestSpec``): parsed as such, so an escaped ``%3A`` or ``%2E%2E`` in a model id's
    segment is neither decoded nor normalised away."""
    return yarl.URL(url, encoded=True)


def _url(spec: RequestSpec) -> yarl.URL:
    """``spec.url`` with ``spec.params`` merged into its query as httpx merged them: a param replaces the
    URL's own values of that name, the rest keep their order, the query encoded as ``urlencode`` does."""
    url = _parsed_url(spec.url)
    if not spec.params:
        return url
    merged: dict[str, list[str]] = {}
    for name, value in parse_qsl(url.raw_query_string, keep_blank_values=True):
        merged.setdefault(name, []).append(value)
    merged.update((name, [str(value)]) for name, value in spec.params.items())
    query = urlencode([(name, value) for name, values in merged.items() for value in values])
    return yarl.URL(f"{url.with_query(None)}?{query}", encoded=True)


def _form(spec: RequestSpec) -> aiohttp.FormData:
    """``spec.data`` fields (a list value repeats its field) then ``spec.files`` as
    ``(name, (filename, bytes, content type))``, in that order, as httpx wrote them. Field values are
    written as given: ``quote_fields=False`` keeps a filename's spaces and non-ASCII letters."""
    form = aiohttp.FormData(quote_fields=False)
    for name, value in (spec.data or {}).items():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            form.add_field(name, str(item))  # form fields are text (bytes would become a file)
    files = spec.files.items() if isinstance(spec.files, dict) else spec.files or ()
    for name, (filename, content, content_type) in files:
        form.add_field(name, content, filename=filename, content_type=content_type)
    return form


def _has_content_type(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "content-type" for name in headers)


async def _request(session: aiohttp.ClientSession, spec: RequestSpec,
                   idle: float | None = None) -> aiohttp.ClientResponse:
    """Send the request and read the status line and headers; the body is left to the caller. ``idle``
    replaces the session's longest silence between two reads (a stream's idle timeout)."""
    headers: Mapping[str, str] = spec.headers
    trace = tracing.outgoing()
    if trace is not None:  # the upstream attempt's span continues at the provider
        headers = {**headers, "traceparent": trace}
    kwargs: dict[str, Any] = {}
    if idle is not None:
        base = session.timeout
        kwargs["timeout"] = aiohttp.ClientTimeout(total=base.total, connect=base.connect,
                                                  sock_connect=base.sock_connect, sock_read=idle)
    if spec.content is not None:
        kwargs["data"] = spec.content
        if not _has_content_type(headers):  # httpx sent raw bytes without one; aiohttp would add octet-stream
            kwargs["skip_auto_headers"] = ("Content-Type",)
    elif spec.json is not None:
        kwargs["data"] = msgspec.json.encode(spec.json)
        headers = {"content-type": "application/json", **headers}
    elif spec.files is not None or spec.data is not None:
        kwargs["data"] = _form(spec)
    return await session.request(spec.method, _url(spec), headers=headers, allow_redirects=False, **kwargs)


def _header_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names, repeated headers joined by ", ": the dict ``Adapter.error`` reads."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def transport_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        # a full timeout's wait again at the same provider is the worst case doubled: the next one instead
        return UpstreamError(0, f"upstream timed out ({type(exc).__name__})", retryable=True, retry_here=False,
                             error_type="upstream_timeout")
    return UpstreamError(0, f"could not reach the upstream ({type(exc).__name__})", retryable=True)


async def send(session: aiohttp.ClientSession, adapter: Adapter, spec: RequestSpec) -> UpstreamResponse:
    """Send and read the whole response; raise ``UpstreamError`` for transport failures and HTTP errors."""
    try:
        response = await _request(session, spec)
        try:
            content = await response.read()  # at the end of the body the connection goes back to the pool
        finally:
            response.release()  # cut short (a failure, a cancelled job): closes the connection instead
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    if response.status >= 400:
        raise adapter.error(response.status, _header_dict(response.headers), content)
    return UpstreamResponse(response.status, response.headers, content)


async def send_json(session: aiohttp.ClientSession, adapter: Adapter, spec: RequestSpec) -> Any:
    response = await send(session, adapter, spec)
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise malformed("upstream returned a body that is not JSON") from None


@asynccontextmanager
async def open_stream(
    session: aiohttp.ClientSession, adapter: Adapter, spec: RequestSpec, timeouts: StreamTimeouts
) -> AsyncIterator[AsyncIterator[Event]]:
    """Open a streaming request; yields an iterator of server-sent events ``(event name, data)``.

    Leaving the block before the body's end closes the upstream connection, which is how a cancelled job
    (client gone) stops the provider from generating further; after the end, the connection is kept.
    """
    async with _opened(session, adapter, spec, timeouts) as response:
        yield _events(response)


@asynccontextmanager
async def open_bytes(
    session: aiohttp.ClientSession, adapter: Adapter, spec: RequestSpec, timeouts: StreamTimeouts
) -> AsyncIterator[tuple[Mapping[str, str], AsyncIterator[bytes]]]:
    """Open a request whose answer is a binary body made as it streams (speech audio); yields its headers
    and its bytes as they arrive, under the same bounds and closing rule as ``open_stream``."""
    async with _opened(session, adapter, spec, timeouts) as response:
        yield response.headers, _chunks(response)


@asynccontextmanager
async def _opened(session: aiohttp.ClientSession, adapter: Adapter, spec: RequestSpec,
                  timeouts: StreamTimeouts) -> AsyncIterator[aiohttp.ClientResponse]:
    """A streamed response whose headers came within ``timeouts.first_byte``; HTTP errors raised."""
    try:
        async with asyncio.timeout(timeouts.first_byte):
            response = await _request(session, spec, idle=timeouts.idle)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    try:
        if response.status >= 400:
            try:
                body = await response.read()
            except TRANSPORT_ERRORS:
                body = b""
            raise adapter.error(response.status, _header_dict(response.headers), body)
        yield response
    finally:
        response.release()


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The response body's server-sent events, decoded chunk by chunk as they arrive (workers/sse.py)."""
    decoder = SSEDecoder()
    try:
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                yield event
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    for event in decoder.close():
        yield event
