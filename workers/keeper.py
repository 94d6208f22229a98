"""A resumable chat stream's events, kept by the worker that makes them (``Job.keep``).

The web process that admitted a detached answer may die (SIGKILL, a deploy): so the worker keeps the
events itself, each batch in the same Lua call as its PUBLISH (``KEEP``: the publish and the keep cost one
round trip), and the final one inside the settlement that bills it (``common/settlement.py``). A reader on
any web process reads them from the answer's Redis stream (``api/exchange/background.py``), in the layout
the web tier writes: entry ids ``0-<last event's seq + 1>``, one entry per batch, a ``cut`` marker past
``max_bytes``, an ``end`` marker after the last. Chat completions' encoding is the identity, so the worker's
frames are the client's events.

A stale attempt (the web tier re-ran the request, or closed it) keeps nothing: the fence says so, read
in the same script. Only where the pool's Redis is the main one (a pool split onto its own Redis leaves
keeping to the web tier, as before).
"""

from __future__ import annotations

from common.mux import Script
from common.wire import KeepEvents

BATCH, CUT, END = "f", "cut", "end"

# KEYS: the answer's events, the request's fence. ARGV: reply channel, event, attempt, entry id, entry kind
# ('f'|'cut'), frames, seconds to expire the stream in ('' = leave it). Returns PUBLISH's receivers.
KEEP = Script("""
local fence = redis.call('GET', KEYS[2])
local current = true
if fence then
  local head = string.sub(fence, 1, 1)
  if head == 's' or head == 'c' or tonumber(fence) > tonumber(ARGV[3]) then current = false end
end
if current then
  redis.pcall('XADD', KEYS[1], ARGV[4], ARGV[5], ARGV[6])
  if ARGV[7] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[7]) end
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
""")


def client_events(frames: bytes) -> list[bytes]:
    """The SSE events in ``frames`` (comments left out), each ending in a blank line: what a reader counts."""
    return [frame + b"\n\n" for frame in frames.split(b"\n\n") if frame and not frame.startswith(b":")]


def chat_error(envelope: bytes) -> bytes:
    """Chat completions' in-band error event (``api/formats/chat_completions.py``'s ``error``)."""
    return b"data: " + envelope + b"\n\n"


class Keeper:
    """One answer's kept events so far: the next entry of a batch of frames, or None once nothing more is
    kept (cut, or ended)."""

    def __init__(self, keep: KeepEvents) -> None:
        self.keep = keep
        self.seq = 0  # client events kept so far
        self.size = 0
        self.active = True

    def entry(self, frames: bytes) -> tuple[str, str, bytes, str] | None:
        """(entry id, kind, blob, expire seconds) for ``frames``; None when they hold no event to keep."""
        events = client_events(frames)
        if not self.active or not events:
            return None
        first = self.seq == 0
        self.size += sum(len(e) for e in events)
        if self.size > self.keep.max_bytes:
            self.active = False
            self.seq += 1
            return f"0-{self.seq}", CUT, b"", str(self.keep.ttl)
        self.seq += len(events)
        return f"0-{self.seq}", BATCH, b"".join(events), str(self.keep.live_ttl) if first else ""

    def final(self, frames: bytes) -> tuple[str, bytes, str, str, int] | None:
        """The final event's entry and the closing marker, for the settlement to write (``FinalKept``);
        None when nothing is kept any more (cut already)."""
        if not self.active:
            return None
        entry = self.entry(frames)
        self.active = False
        if entry is not None and entry[1] == CUT:
            return "", b"", entry[0], CUT, self.keep.ttl
        final_id, blob = (entry[0], entry[2]) if entry is not None else ("", b"")
        self.seq += 1
        return final_id, blob, f"0-{self.seq}", END, self.keep.ttl
