"""The worker's upstream client (workers/upstream.py) against a real local HTTP server, on both transports."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any

import msgspec
import pytest

from common.settings import Settings
from tests.fakes.server import ThreadedServer
from workers.providers import adapter_for
from workers.providers.base import RequestSpec, UpstreamError
from workers.upstream import make_http_client, send_json


class CookieSetter:
    """Answers every request with the Cookie header it got, the peer's port, and a Set-Cookie."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        body = msgspec.json.encode({"cookie": headers.get(b"cookie", b"").decode(), "port": scope["client"][1]})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"set-cookie", b"affinity=abc; Path=/")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_no_cookie_is_kept_and_connections_are_reused(transport: str) -> None:
    with ThreadedServer(CookieSetter(), lifespan="off") as server:
        client = make_http_client(Settings(upstream_transport=transport))
        try:
            answers = [(await client.get(server.url + "/")).json() for _ in range(3)]
        finally:
            await client.aclose()
    assert [a["cookie"] for a in answers] == ["", "", ""]  # the Set-Cookie of one caller's answer is not replayed
    assert len({a["port"] for a in answers}) == 1  # keep-alive: one connection for all three


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown upstream transport"):
        make_http_client(Settings(upstream_transport="carrier-pigeon"))


class HangUp:
    """A TCP server that reads a request and closes the connection without answering (after ``delay``)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/chat/completions"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                time.sleep(self.delay)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_hang_up_is_a_connection_error_and_silence_a_timeout(transport: str) -> None:
    """A server that hangs up is "could not reach", not a timeout (httpx-aiohttp maps both to
    ConnectTimeout); a server that says nothing for longer than the read timeout is a timeout."""
    adapter = adapter_for("openai")
    spec = RequestSpec("POST", "", json={"model": "m", "messages": []})
    hang_up, silent = HangUp(), HangUp(delay=2.0)
    client = make_http_client(Settings(upstream_transport=transport, upstream_read_timeout=0.3))
    try:
        with pytest.raises(UpstreamError) as gone:
            await send_json(client, adapter, dataclasses.replace(spec, url=hang_up.url))
        with pytest.raises(UpstreamError) as quiet:
            await send_json(client, adapter, dataclasses.replace(spec, url=silent.url))
    finally:
        await client.aclose()
        hang_up.close()
        silent.close()
    assert gone.value.error_type != "upstream_timeout" and gone.value.retryable
    assert "could not reach" in str(gone.value)
    assert quiet.value.error_type == "upstream_timeout" and quiet.value.retryable
