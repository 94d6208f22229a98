"""Client wire formats: each module decodes its request into the canonical request and encodes the
canonical events back into its own JSON body and stream.

The canonical request is the OpenAI chat-completions body (``Job.body``), and the canonical stream is
``chat.completion.chunk`` SSE frames, as the workers shape them (``workers/chunks.py``).

Encoding runs in the web tier, for three reasons: the worker stays one code path for every inbound
protocol (retries, fallback and accounting see one shape); a format is a pure function of the events,
so it is tested without a queue; and chat completions, the hot path, costs nothing: its encoder passes
the worker's bytes through untouched. The other formats parse the canonical frames once more in the web
process, which is small next to the upstream call. Only a provider that speaks the client's own protocol
skips the canonical shape altogether (``Job.native``: Anthropic behind ``/v1/messages``, Gemini behind
Gemini's API): its events arrive already encoded.

A format's stream encoder may name its own ``keepalive`` bytes (Gemini's: a blank line, since Google's
SDKs fail on the SSE comment the other formats send).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

import msgspec

from common.errors import invalid
from common.wire import Event

P = ParamSpec("P")
R = TypeVar("R")


class StreamEncoder(Protocol):
    """One stream's encoder: it may keep state (block indexes, sequence numbers) across events."""

    def frames(self, event: Event) -> bytes:
        """The client's bytes for a ``data`` or ``done`` event."""
        ...

    def error(self, status: int, envelope: bytes) -> bytes:
        """The protocol's own in-band error event, ending the stream (``envelope`` is ours)."""
        ...


class WireFormat(Protocol):
    def error_body(self, status: int, envelope: bytes) -> bytes:
        """A refusal in this route's documented error shape (``envelope`` is the gateway's own)."""
        ...

    def result(self, event: Event) -> bytes:
        """The JSON body of a non-streaming answer."""
        ...

    def stream(self) -> StreamEncoder: ...


SEALED_PREFIX = "mb1."  # our opaque reasoning: canonical reasoning details as base64url JSON


def seal_details(details: list[dict[str, Any]]) -> str:
    """Reasoning details as one opaque string, for a client format whose only place for another
    provider's reasoning is an opaque field (a Responses item's ``encrypted_content``, a Messages thinking
    block's ``signature``): the client sends it back unchanged, and ``unseal_details`` restores them, their
    ``format`` and call ``id`` included, for whichever upstream serves the next turn."""
    return SEALED_PREFIX + base64.urlsafe_b64encode(msgspec.json.encode(details)).decode()


def unseal_details(content: str) -> list[dict[str, Any]] | None:
    """The details ``seal_details`` made, or None when ``content`` is not ours."""
    if not content.startswith(SEALED_PREFIX):
        return None
    try:
        details = msgspec.json.decode(base64.urlsafe_b64decode(content[len(SEALED_PREFIX):]))
    except (ValueError, msgspec.DecodeError):
        return None
    return details if isinstance(details, list) else None


def canonical_chunks(frames: bytes) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` dicts in a run of canonical SSE frames (``[DONE]`` and comments
    skipped), for formats that re-encode the stream."""
    chunks = []
    for frame in frames.split(b"\n\n"):
        if frame.startswith(b"data: ") and frame[6:] != b"[DONE]":
            chunks.append(msgspec.json.decode(frame[6:]))
    return chunks


def envelope_parts(envelope: bytes) -> tuple[str, str]:
    """(error_type, message) of the gateway's own error envelope."""
    try:
        data = msgspec.json.decode(envelope)
        return str(data.get("error_type") or data["error"]["type"]), str(data["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return "upstream_error", envelope.decode("utf-8", "replace")[:500]


def sse(event: str, data: Any) -> bytes:
    """One named Server-Sent Event (the Messages and Responses streams name every event)."""
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


class CanonicalStream:
    """Base of the streams that re-encode canonical chunks: it walks each event's chunks and calls the
    hooks, ``begin`` (before the first chunk, once), ``delta`` (per choice delta) and ``end`` (after the
    ``done`` event's chunks). Native events (``Job.native``) are already the client's bytes."""

    usage: dict[str, Any] | None = None
    finish_reason: str | None = None

    def frames(self, event: Event) -> bytes:
        if event.native:
            return event.data
        out: list[bytes] = []
        for chunk in canonical_chunks(event.data):
            self.begin(chunk, out)
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                self.delta(choice.get("delta") or {}, out)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        if event.kind == "done":
            self.begin({}, out)
            self.end(out)
        return b"".join(out)

    def begin(self, chunk: dict[str, Any], out: list[bytes]) -> None: ...

    def delta(self, delta: dict[str, Any], out: list[bytes]) -> None: ...

    def end(self, out: list[bytes]) -> None: ...


def shape_checked(api: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decoder's wrong-shaped input (a number where blocks belong…) is the client's 400, never our 500:
    the decoders read nested JSON that the validating Structs leave untyped."""

    def wrap(decode: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(decode)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return decode(*args, **kwargs)
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                raise invalid(f"The request body is not a valid {api} request: a field has the wrong "
                              f"shape ({type(exc).__name__}: {exc}).") from None

        return checked

    return wrap
