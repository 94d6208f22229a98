"""The fake upstream as the bench runs it: ``tests.fakes.openai_server``'s app, plus a count of the TCP
connections it accepted.

Connections opened per request is the figure that shows whether a client keeps its connections alive; the
ASGI scope names the peer's (address, port) of every request, and each new connection has a new port, so the
set of peers seen is the set of connections opened. ``GET /_bench/connections`` reads it.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from tests.fakes.openai_server import OpenAIFakeState, _NoLog, create_openai_app

STATS_PATH = "/_bench/connections"


class CountConnections:
    """ASGI wrapper: remembers every peer seen; answers ``STATS_PATH`` with how many."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.peers: set[tuple[str, int]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if client:
                self.peers.add(tuple(client))
            if scope["path"] == STATS_PATH:
                body = msgspec.json.encode({"connections": len(self.peers)})
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="The bench's fake OpenAI upstream (counts connections).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args(argv)
    state = OpenAIFakeState(tokens=args.tokens)
    state.requests = _NoLog()
    uvicorn.run(CountConnections(create_openai_app(state)), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
