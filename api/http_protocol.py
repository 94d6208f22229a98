"""uvicorn's httptools protocol, with what a response writes in one event-loop turn sent in one write.

uvicorn writes a response's status line and headers the moment the app starts the response, and the body
in a second write: two system calls and two TCP segments for every JSON answer, and again for a stream's
head and first frames. The transport wrapper here holds the writes of one loop turn and sends them
together at the end of it, so a JSON answer leaves in one segment. Nothing waits longer than that turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TurnBufferedTransport:
    """An ``asyncio.Transport`` whose writes of one loop turn go out as one; everything else is the
    wrapped transport's own."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # a response followed by "connection: close" still goes out whole
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=OneWriteProtocol)``: httptools parsing, turn-buffered writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(TurnBufferedTransport(transport, self.loop))  # type: ignore[arg-type]
