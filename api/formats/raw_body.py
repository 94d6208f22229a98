"""Answers that are one body, not a stream of frames: audio bytes, or a large JSON body (images).

The worker sends such a body in pieces (``data`` events of at most ``workers/chunks.py``
``MAX_EVENT_BYTES``, the last piece on its ``done``), so no pub/sub message carries more than that
however large the answer; the web tier writes the pieces out as they come, under the body's own
content type. Before the first piece, the status line waits up to ``commit_wait`` seconds, so an error
still gets its status; after that the headers go out with ``keepalive`` bytes (a space before JSON;
nothing for audio, where any byte would be part of the file).

An error after the body began cannot be said in it: a JSON body that has sent only its leading spaces
gets the error envelope as its body; otherwise the connection is cut (``BodyCut``), so the client sees an
incomplete body (chunked transfer without its end), never a truncated file that looks whole.
"""

from __future__ import annotations

from common.wire import Event


class BodyCut(Exception):
    """Ends a response mid-body: the server then closes the connection without the body's end."""


class RawBody:
    def __init__(self, media_type: str, *, keepalive: bytes = b"", commit_wait: float | None = None) -> None:
        self.media_type = media_type
        self.keepalive = keepalive
        self.commit_wait = commit_wait  # None: the gateway's stream_commit_wait
        self._sent_data = False

    def error_body(self, status: int, envelope: bytes) -> bytes:
        return envelope

    def result(self, event: Event) -> bytes:
        return event.data

    def stream(self) -> "RawBody":
        return RawBody(self.media_type, keepalive=self.keepalive, commit_wait=self.commit_wait)

    def frames(self, event: Event) -> bytes:
        if event.data:
            self._sent_data = True
        return event.data

    def error(self, status: int, envelope: bytes) -> bytes:
        if self.keepalive.isspace() and not self._sent_data:
            return envelope  # only whitespace went out: the envelope is still a well-formed JSON body
        raise BodyCut(f"the answer failed after its body began (HTTP {status})")
