"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

The client shares the machine's two cores with the gateway; httpx would spend several times more CPU per
request than this, skewing both sides of the comparison. Direct and gateway runs use the same code, so
whatever the client costs is the same on both sides.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

FIRST_TOKEN = b"tok0"  # the fake upstream's first content token: TTFT is time until it arrives


@dataclass
class Sample:
    status: int
    total: float  # seconds from sending the request to the end of the response
    first_token: float | None  # seconds until FIRST_TOKEN arrived (streams), else None


@dataclass
class PhaseResult:
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0  # seconds the measured requests took, first sent to last answered

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.status != 200)


class Connection:
    """One keep-alive connection; reconnects if the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    async def post(self, path: str, body: bytes) -> Sample:
        reader, writer = await self._ensure()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        started = time.perf_counter()
        try:
            return await self._exchange(reader, writer, head + body, started)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            # the server dropped the connection (or sent garbage): a failed request, counted, not a crash
            writer.close()
            self.reader = self.writer = None
            return Sample(0, time.perf_counter() - started, None)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                        started: float) -> Sample:
        writer.write(data)
        status, headers = await _read_head(reader)
        first: float | None = None
        if headers.get(b"transfer-encoding") == b"chunked":
            seen = b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                chunk = (await reader.readexactly(size + 2))[:-2]
                if first is None:
                    seen = seen[-len(FIRST_TOKEN):] + chunk
                    if FIRST_TOKEN in seen:
                        first = time.perf_counter() - started
        else:
            await reader.readexactly(int(headers.get(b"content-length", b"0")))
        total = time.perf_counter() - started
        if headers.get(b"connection") == b"close":
            writer.close()
            self.reader = self.writer = None
        return Sample(status, total, first)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
    return status, headers


async def run_phase(host: str, port: int, path: str, body: bytes, *, requests: int, concurrency: int,
                    warmup: int) -> PhaseResult:
    """``warmup`` unrecorded requests per connection, then ``requests`` recorded ones over ``concurrency``."""
    conns = [Connection(host, port) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(_repeat(c, path, body, warmup) for c in conns))
        result = PhaseResult()
        remaining = [requests]

        async def loop(conn: Connection) -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                result.samples.append(await conn.post(path, body))

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in conns))
        result.wall = time.perf_counter() - started
        return result
    finally:
        for conn in conns:
            conn.close()


async def _repeat(conn: Connection, path: str, body: bytes, times: int) -> None:
    for _ in range(times):
        await conn.post(path, body)
