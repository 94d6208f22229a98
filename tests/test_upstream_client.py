"""The worker's upstream client (workers/upstream.py) against a real local HTTP server, on both transports."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from common.settings import Settings
from tests.fakes.server import ThreadedServer
from workers.upstream import make_http_client


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
