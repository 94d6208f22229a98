"""The one small interface every provider adapter implements.

An adapter only translates: it builds the upstream HTTP request from an OpenAI-shaped body, and turns the
upstream's response, stream events and errors back into OpenAI shapes. Sending, retrying, timeouts and
publishing are shared (``workers/upstream.py``, ``workers/chat.py``), so every quirk of a provider lives in
its own module and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import msgspec

from router.shaping import EndpointShape


@dataclass(frozen=True)
class Upstream:
    """Where and how to reach one provider, resolved from the registry, the environment and the config."""

    provider: str
    kind: str  # openai | anthropic | gemini | azure
    base_url: str
    api_key: str | None = None
    auth: str = "bearer"  # bearer | x-api-key | api-key | x-goog-api-key | none | <header name>
    api_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    quirks: dict[str, Any] = field(default_factory=dict)
    default_max_tokens: int = 4096
    # Client headers this request forwards where the adapter knows them (Anthropic: ``anthropic-beta``).
    client_headers: dict[str, str] = field(default_factory=dict)
    # What the serving endpoint takes (router/shaping.py), set per request; None: the protocol's defaults.
    shape: EndpointShape | None = None


@dataclass
class RequestSpec:
    """An HTTP request for the shared client to send. Exactly one of json/content/files may be set.

    ``url`` is percent-encoded and sent as written: built from the provider's base URL (encoded once, in
    ``workers/runtime.py``), fixed paths and, where an id goes into the path, ``path_segment``."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    files: Any = None  # multipart files: [(field name, (filename, bytes, content type))]
    data: Any = None  # multipart form fields: {name: value or list of values}
    params: dict[str, str] | None = None


MAX_SEGMENT = 256


def path_segment(value: str, what: str = "model") -> str:
    """``value`` (a model id, a deployment name) as exactly one segment of an upstream URL path.

    Every character outside the unreserved set is percent-escaped, so ``/`` cannot add segments, ``?`` and
    ``#`` cannot start a query or fragment, ``:`` cannot name another method (Gemini's ``model:method``) and
    ``%`` cannot smuggle an escape; ``.`` and ``..``, which URL normalisation would resolve, and control
    characters are refused (400 ``invalid_request``: no provider has such a model). The URL is sent as
    written (``workers/upstream.py`` parses it as encoded)."""
    if (not value or value in (".", "..") or len(value) > MAX_SEGMENT
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
        raise UpstreamError(400, f"The {what} id {value[:80]!r} cannot be sent to this provider.", retryable=False,
                            fallback=False, error_type="invalid_request", param="model")
    return quote(value, safe="")


class UpstreamError(Exception):
    """A failed upstream call, classified once by the adapter that understands the provider.

    ``retryable`` errors are retried with backoff and then handed to the next candidate provider;
    others (bad request, bad key) go straight back to the client in the envelope. ``retry_here=False``
    skips the retries at the same provider (a timeout, a malformed answer: trying it again costs another
    full wait or another bad answer) and goes straight to the next candidate.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retryable: bool,
        fallback: bool | None = None,
        error_type: str = "upstream_error",
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_here: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # the upstream's HTTP status (0 for connection errors and timeouts)
        self.message = message
        self.retryable = retryable  # a passing failure (the client is told "try again")
        self.retry_here = retryable if retry_here is None else retry_here  # worth another try at the same provider
        self.fallback = retryable if fallback is None else fallback  # worth trying the next provider
        self.error_type = error_type
        self.retry_after = retry_after
        self.code = code
        self.param = param

    @property
    def client_status(self) -> int:
        """The status the client sees: the upstream's own 4xx for its request errors, else the catalogue's."""
        if self.error_type == "invalid_request" and 400 <= self.status < 500:
            return self.status
        from common.errors import STATUS_BY_TYPE

        return STATUS_BY_TYPE.get(self.error_type, 502)

    def __repr__(self) -> str:
        return f"UpstreamError({self.status}, {self.message!r}, retryable={self.retryable})"


def malformed(message: str) -> UpstreamError:
    """A 200 answer we cannot read (no choices, a bad chunk, a stream cut short): the next provider, not the
    same one again."""
    return UpstreamError(502, message, retryable=True, retry_here=False)


class StreamTranslator(Protocol):
    """Turns one upstream stream into OpenAI ``chat.completion.chunk`` dicts.

    ``feed`` receives each server-sent event (its ``event:`` name or None, and its ``data:`` text) and
    returns the chunks it completes; it raises ``UpstreamError`` for an in-band error. ``close`` is called
    at the end of the upstream body and raises ``UpstreamError`` if the stream did not end properly, so a
    cut stream is never passed off as complete.
    """

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]: ...

    def close(self) -> list[dict[str, Any]]: ...


class Adapter(Protocol):
    """A provider's protocol. One instance serves every request of its kind; it must hold no request state."""

    def chat_request(self, up: Upstream, model: str, body: dict[str, Any], stream: bool) -> RequestSpec: ...

    def chat_response(self, data: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        """The upstream's JSON body → an OpenAI ``chat.completion`` dict (id/model are set by the caller).

        ``request`` is the canonical body it answers, its ``model`` the upstream id (for answers whose
        shape depends on how the request was translated, like Anthropic's forced JSON tool).
        """
        ...

    def stream_translator(self, request: dict[str, Any] | None = None) -> StreamTranslator: ...

    def error(self, status: int, headers: dict[str, str], body: bytes) -> UpstreamError:
        """Classify an upstream HTTP error (status >= 400) into an ``UpstreamError``."""
        ...


def error_message_from_json(body: bytes, default: str) -> tuple[str, str | None]:
    """The (message, code) of the usual ``{"error": {"message", "code"|"type"}}`` shapes, else ``default``."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or default), None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type") or err.get("status")
        return str(err.get("message") or default), (str(code) if code is not None else None)
    if isinstance(err, str):
        return err, None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"], None
    return default, None


def retry_after_seconds(headers: dict[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), as the OpenAI SDK reads them."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import time

    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529})


def classify_status(status: int) -> tuple[bool, bool, str]:
    """(retryable, fallback, error_type) for an upstream HTTP status: the common part of every ``error``.

    A rejected provider key is the gateway's problem, not the client's: it is reported as an upstream error
    (never as a 401 the client would blame on its own key) and the next provider may still answer.
    """
    if status in (401, 403):
        return False, True, "upstream_error"
    if status == 404:
        return False, True, "model_not_found"
    if status == 413:
        return False, False, "payload_too_large"
    if status == 429:
        return True, True, "rate_limit_exceeded"
    if status in RETRYABLE_STATUSES or status >= 500:
        return True, True, "upstream_error"
    return False, False, "invalid_request"
