"""Model ids and deployment names in upstream URL paths are validated and escaped (issue 23, finding 6).

An audit with a configured pass-through price for ``google/*`` made the worker send, with the operator's
``x-goog-api-key``, ``POST /v1/tunedModels/x:delete?:generateContent`` and ``/v1beta/cachedContents?pageSize=…``.
Here a raw upstream records each request line exactly as it arrived on the socket (no HTTP library in
between to normalise it) and answers as Gemini does for a model it does not have (404).
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from tests.harness import GatewayHarness, create_key, env_for
from workers.providers.azure import AzureAdapter
from workers.providers.base import Upstream, UpstreamError, path_segment

GEMINI_404 = json.dumps({"error": {"code": 404, "message": "models/x is not found for API version v1beta.",
                                   "status": "NOT_FOUND"}}).encode()

# ids a client can send once google/* has a price: each must reach Gemini as one escaped path segment
CRAFTED = ["x:delete?", "../cachedContents?pageSize=1000", "a/b", "..%2Fcached", "%2e%2e", "x#frag",
           "tunedModels/x:delete?", "x y", "ünïcode"]
REFUSED = ["..", "."]


class RawRecorder:
    """A TCP server that records request lines byte for byte and answers 404 in Gemini's shape."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65536).rstrip(b"\r\n")
                length = 0
                while (header := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                self.rfile.read(length)
                recorder.lines.append(line)
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\nconnection: close\r\n"
                                 + f"content-length: {len(GEMINI_404)}\r\n\r\n".encode() + GEMINI_404)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RawRecorder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[RawRecorder]:
    with RawRecorder() as server:
        yield server


@pytest.fixture
def gemini_gateway(redis_url: str, recorder: RawRecorder, tmp_path: Path) -> Iterator[GatewayHarness]:
    config = tmp_path / "megabrain.toml"
    config.write_text('[[models]]\nid = "google/*"\npricing = { prompt = "0.000001", completion = "0.000002" }\n')
    env = env_for(redis_url, MEGABRAIN_CONFIG=str(config), GEMINI_BASE_URL=recorder.url,
                  GEMINI_API_KEY="operator-gemini-key")
    env["KEY"] = create_key(redis_url, env["MEGABRAIN_NAMESPACE"])
    with GatewayHarness.from_env(env, pools=("google",)) as harness:
        yield harness


def one_segment(line: bytes, method: str) -> str:
    """The model segment of ``POST /v1beta/models/<segment>:<method>[?alt=sse] HTTP/1.1``, checked to be
    exactly that shape: nothing of the id became a path separator, a query, a fragment or another method."""
    verb, target, version = line.split(b" ")
    assert (verb, version) == (b"POST", b"HTTP/1.1")
    path, _, query = target.decode("ascii").partition("?")
    assert query in ("", "alt=sse")
    prefix = "/v1beta/models/"
    assert path.startswith(prefix) and path.endswith(":" + method), path
    segment = path[len(prefix):-len(":" + method)]
    assert all(c not in segment for c in "/?#: ") and segment not in (".", ".."), segment
    return segment


def test_crafted_model_ids_reach_gemini_as_one_escaped_segment(gemini_gateway: GatewayHarness,
                                                               recorder: RawRecorder) -> None:
    key = gemini_gateway.settings.env["KEY"]
    for n, crafted in enumerate(CRAFTED):
        response = httpx.post(gemini_gateway.url + "/v1/chat/completions", timeout=20,
                              headers={"authorization": f"Bearer {key}"},
                              json={"model": f"google/{crafted}", "messages": [{"role": "user", "content": "hi"}],
                                    "stream": n % 2 == 1})
        assert response.status_code >= 400 or "error" in response.text, response.text
        assert len(recorder.lines) == n + 1, (crafted, recorder.lines)
        method = "streamGenerateContent" if n % 2 else "generateContent"
        segment = one_segment(recorder.lines[-1], method)
        assert unquote(segment) == crafted  # escaped, not changed: Gemini itself says it has no such model
    for crafted in REFUSED:
        response = httpx.post(gemini_gateway.url + "/v1/chat/completions", timeout=20,
                              headers={"authorization": f"Bearer {key}"},
                              json={"model": f"google/{crafted}", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 400 and response.json()["error_type"] == "invalid_request", response.text
    assert len(recorder.lines) == len(CRAFTED)  # the refused ones reached nobody
    assert not any(b"cachedContents?" in line or b"tunedModels/x:delete" in line for line in recorder.lines)


async def test_azure_deployment_names_are_one_escaped_segment(recorder: RawRecorder) -> None:
    from workers.runtime import encoded_url
    from workers.upstream import make_http_client, send_json
    from common.settings import Settings

    up = Upstream(provider="azure", kind="azure", base_url=encoded_url(recorder.url), api_key="k", auth="api-key")
    adapter = AzureAdapter()
    session = make_http_client(Settings())
    try:
        for name in ("../chat", "x?api-version=1", "a/b", "%2e%2e"):
            spec = adapter.chat_request(up, name, {"model": name, "messages": [{"role": "user", "content": "hi"}]},
                                        False)
            with pytest.raises(UpstreamError):
                await send_json(session, adapter, spec)
            target = recorder.lines[-1].split(b" ")[1].decode()
            path, _, query = target.partition("?")
            assert path.startswith("/openai/deployments/") and path.endswith("/chat/completions"), path
            segment = path[len("/openai/deployments/"):-len("/chat/completions")]
            assert "/" not in segment and unquote(segment) == name
            assert query.startswith("api-version=") and query.count("api-version") == 1
    finally:
        await session.close()
    for name in ("..", ".", "a\nb"):
        with pytest.raises(UpstreamError) as refused:
            adapter.chat_request(up, name, {"model": name, "messages": []}, False)
        assert refused.value.client_status == 400


def test_path_segment_escapes_everything_but_unreserved_characters() -> None:
    assert path_segment("gemini-2.5-flash") == "gemini-2.5-flash"
    assert path_segment("a/b:c?d#e%f g") == "a%2Fb%3Ac%3Fd%23e%25f%20g"
    for bad in ("", ".", "..", "x\x00", "x" * 300):
        with pytest.raises(UpstreamError):
            path_segment(bad)
