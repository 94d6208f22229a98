"""Sending requests upstream: one shared httpx client per worker process, and an SSE reader.

Transport failures become ``UpstreamError`` here, so the retry logic only ever sees one exception type.
HTTP errors are classified by the provider's own adapter (``Adapter.error``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import msgspec

from common.settings import Settings
from workers.providers.base import Adapter, RequestSpec, UpstreamError


class _NoCookies(httpx.Cookies):
    """A jar that stays empty: what an upstream sets must never ride along on other callers' requests."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class UpstreamClient(httpx.AsyncClient):
    """httpx's client without a cookie jar: one client serves every caller, so a provider's ``Set-Cookie``
    (a load balancer's affinity cookie, say) must not be sent back for someone else; and parsing each
    response's cookies into a jar was ~4% of a worker's CPU."""

    _no_cookies = _NoCookies()

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, value: Any) -> None:
        raise TypeError("the upstream client keeps no cookies")


def make_http_client(settings: Settings, max_connections: int = 200) -> httpx.AsyncClient:
    """The process-wide client: pooled keep-alive connections and explicit timeouts.

    ``read`` bounds the gap between two bytes of a response (a stalled stream), not the whole call; the
    whole call is bounded by the request's deadline.

    The transport is aiohttp's (``httpx-aiohttp``, as the OpenAI SDK does) unless ``upstream_transport``
    says ``httpcore``: same httpx API, TLS verification and HTTP/1.1 keep-alive, but its connection pool and
    parser (C-accelerated) cost far less CPU per request than httpcore's on anyio (bench/README.md).
    """
    timeout = httpx.Timeout(
        connect=settings.upstream_connect_timeout,
        read=settings.upstream_read_timeout,
        write=30.0,
        pool=10.0,
    )
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                          keepalive_expiry=60.0)
    transport = None
    if settings.upstream_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits, trust_env=False)
    elif settings.upstream_transport != "httpcore":
        raise ValueError(f"unknown upstream transport {settings.upstream_transport!r} (aiohttp or httpcore)")
    return UpstreamClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False,
                          transport=transport)


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    """Upstream URLs repeat (one per provider, or per model): parse each once, not per request."""
    return httpx.URL(url)


def _build(client: httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
    kwargs: dict[str, Any] = {"headers": spec.headers, "params": spec.params}
    if spec.content is not None:
        kwargs["content"] = spec.content
    elif spec.json is not None:
        kwargs["content"] = msgspec.json.encode(spec.json)
        kwargs["headers"] = {"content-type": "application/json", **spec.headers}
    elif spec.files is not None or spec.data is not None:
        kwargs["files"] = spec.files
        kwargs["data"] = spec.data
    return client.build_request(spec.method, _parsed_url(spec.url), **kwargs)


# What a failed exchange with an upstream raises: httpx's errors, and aiohttp's own that httpx-aiohttp lets
# through unmapped (a malformed response, say).
TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError)


def _timed_out(exc: BaseException) -> bool:
    """httpx-aiohttp maps every aiohttp connection error, a server that hung up included, to ConnectTimeout:
    under it, only an aiohttp timeout (those are TimeoutErrors) counts as one."""
    if isinstance(exc, TimeoutError):
        return True
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return not isinstance(cause, aiohttp.ClientError) or isinstance(cause, TimeoutError)


def transport_error(exc: BaseException) -> UpstreamError:
    if _timed_out(exc):
        return UpstreamError(0, f"upstream timed out ({type(exc).__name__})", retryable=True,
                             error_type="upstream_timeout")
    return UpstreamError(0, f"could not reach the upstream ({type(exc).__name__})", retryable=True)


async def send(client: httpx.AsyncClient, adapter: Adapter, spec: RequestSpec) -> httpx.Response:
    """Send and read the whole response; raise ``UpstreamError`` for transport failures and HTTP errors."""
    try:
        response = await client.send(_build(client, spec))
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    if response.status_code >= 400:
        raise adapter.error(response.status_code, dict(response.headers), response.content)
    return response


async def send_json(client: httpx.AsyncClient, adapter: Adapter, spec: RequestSpec) -> Any:
    response = await send(client, adapter, spec)
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise UpstreamError(502, "upstream returned a body that is not JSON", retryable=True) from None


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, adapter: Adapter, spec: RequestSpec
) -> AsyncIterator[AsyncIterator[tuple[str | None, str]]]:
    """Open a streaming request; yields an iterator of server-sent events ``(event name, data)``.

    Leaving the block closes the upstream connection, which is how a cancelled job (client gone) stops
    the provider from generating further.
    """
    try:
        response = await client.send(_build(client, spec), stream=True)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    try:
        if response.status_code >= 400:
            try:
                body = await response.aread()
            except TRANSPORT_ERRORS:
                body = b""
            raise adapter.error(response.status_code, dict(response.headers), body)
        yield _events(response)
    finally:
        await response.aclose()


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str]]:
    """Server-sent events from a response body; LF, CRLF and CR line ends; comments skipped."""
    event: str | None = None
    data: list[str] = []
    try:
        async for line in response.aiter_lines():
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = None, []
                continue
            if line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(" ") else value)
            elif line.startswith("event:"):
                event = line[6:].strip()
            # ":" comments (keep-alives, OpenRouter's processing notes), id: and retry: are ignored
        if data:
            yield event, "\n".join(data)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
