"""Answers that are one binary body streamed as it is made (speech audio), not frames.

The worker sends the body's bytes as ``data`` events (``workers/speech.py``); the web tier writes them
out as they come, under the body's own content type. Before the first bytes, the status line waits up to
``commit_wait`` seconds, so an error still gets its status; after that the headers go out with nothing
else (any byte would be part of the file).

An error after that cannot be said in the body: the connection is cut (``BodyCut``), so the client sees
an incomplete body (chunked transfer without its end), never a truncated file that looks whole.
"""

from __future__ import annotations

from common.wire import Event


class BodyCut(Exception):
    """Ends a response mid-body: the server then closes the connection without the body's end."""


class RawBody:
    keepalive = b""  # nothing may be written that is not the file

    def __init__(self, media_type: str, *, commit_wait: float | None = None) -> None:
        self.media_type = media_type
        self.commit_wait = commit_wait  # None: the gateway's stream_commit_wait

    def error_body(self, status: int, envelope: bytes) -> bytes:
        return envelope

    def result(self, event: Event) -> bytes:
        return event.data

    def stream(self) -> "RawBody":
        return self  # stateless

    def frames(self, event: Event) -> bytes:
        return event.data

    def error(self, status: int, envelope: bytes) -> bytes:
        raise BodyCut(f"the answer failed after its headers went out (HTTP {status})")
