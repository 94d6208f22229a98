"""OpenAI chat completions: the canonical format itself, so encoding is the identity.

This is the hot path: the worker's bytes go to the client untouched, and the request body is the job.
Embeddings and transcriptions are OpenAI-shaped end to end as well and use it too.
"""

from __future__ import annotations

from common.wire import Event


class ChatCompletions:
    def error_body(self, status: int, envelope: bytes) -> bytes:
        return envelope

    def result(self, event: Event) -> bytes:
        return event.data

    def stream(self) -> "ChatCompletions":
        return self  # stateless

    def frames(self, event: Event) -> bytes:
        return event.data

    def error(self, status: int, envelope: bytes) -> bytes:
        return b"data: " + envelope + b"\n\n"


CHAT_COMPLETIONS = ChatCompletions()
