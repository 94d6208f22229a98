"""Server-sent events from the raw chunks of a response body, as they arrive.

A plain function of bytes, so the line-end cases (an upstream's LF, CRLF or CR, a CRLF cut in two by the
network) are tested without a server, and the worker reads each chunk once instead of line by line.
Only CR, LF and CRLF end a line, as the SSE spec says: a JSON string may hold a raw U+2028, which
``str.splitlines`` would wrongly cut.
"""

from __future__ import annotations

Event = tuple[str | None, str]  # (the ``event:`` name or None, the ``data:`` lines joined by LF)


class SSEDecoder:
    """Feed body chunks, take the events they complete; ``close`` at the end of the body for the rest."""

    def __init__(self) -> None:
        self._partial = b""  # the start of a line whose end has not arrived yet
        self._after_cr = False  # the last chunk ended in CR: an LF opening the next one belongs to it
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if self._partial:
            chunk = self._partial + chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        self._partial = lines.pop()
        events: list[Event] = []
        for line in lines:
            self._line(line.decode("utf-8", "replace"), events)
        return events

    def close(self) -> list[Event]:
        """The events left at the end of the body: a last line without its line end, an event without its
        blank line."""
        events: list[Event] = []
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"), events)
            self._partial = b""
        if self._data:
            events.append((self._event, "\n".join(self._data)))
        self._event, self._data = None, []
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append((self._event, "\n".join(self._data)))
            self._event, self._data = None, []
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        # ":" comments (keep-alives, OpenRouter's processing notes), id: and retry: are ignored
