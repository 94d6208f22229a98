"""The worker's upstream client (workers/upstream.py) against real local servers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from common.settings import Settings
from tests.fakes.server import ThreadedServer
from tests.harness import self_signed_cert
from workers.providers import adapter_for
from workers.providers.base import RequestSpec, UpstreamError
from workers.upstream import StreamTimeouts, _url, make_http_client, open_stream, send, send_json

ADAPTER = adapter_for("openai")
TIMEOUTS = StreamTimeouts(first_byte=30.0, idle=30.0)


class Upstream:
    """Answers by path; remembers what each request carried and whether a stream's reader hung up.

    ``/json``: the request as it arrived (its cookie, the peer's port, headers, query) and a Set-Cookie;
    ``/form``: the multipart form as a server parses it; ``/stream?n=N``: N events, 20 ms apart;
    ``/limited``: 429 with a Retry-After; ``/moved``: a redirect to ``/json``.
    """

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.stream_abandoned = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.hits.append(path)
        if path == "/form":
            form = await Request(scope, receive).form()
            fields: dict[str, list[Any]] = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    value = {"filename": value.filename, "content_type": value.content_type,
                             "bytes": (await value.read()).decode()}
                fields.setdefault(name, []).append(value)
            await self._answer(send, 200, msgspec.json.encode(fields))
        elif path == "/stream":
            await self._stream(scope, receive, send)
        elif path == "/limited":
            await self._answer(send, 429, b'{"error": {"message": "slow down"}}', [(b"Retry-After", b"7")])
        elif path == "/moved":
            await self._answer(send, 302, b"", [(b"location", b"/json")])
        else:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            await self._answer(send, 200, msgspec.json.encode({
                "cookie": headers.get("cookie", ""), "port": scope["client"][1], "headers": headers,
                "query": scope["query_string"].decode(), "body": body.decode(),
            }), [(b"set-cookie", b"affinity=abc; Path=/")])

    async def _answer(self, send: Any, status: int, body: bytes, headers: list | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.stream_abandoned.set()

        watcher = asyncio.create_task(watch())
        n = int(scope["query_string"].decode().partition("=")[2] or 3)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(n):
            if watcher.done():
                return
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b""})
        watcher.cancel()


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with ThreadedServer(app, lifespan="off") as server:
        yield app, server.url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_http_client(Settings(upstream_read_timeout=0.5))
    yield client
    await client.close()


def spec(url: str, **fields: Any) -> RequestSpec:
    return RequestSpec(fields.pop("method", "POST"), url, **fields)


async def test_no_cookie_is_kept_and_connections_are_reused(upstream: tuple[Upstream, str],
                                                            session: aiohttp.ClientSession) -> None:
    answers = [await send_json(session, ADAPTER, spec(upstream[1] + "/json", json={})) for _ in range(3)]
    assert [a["cookie"] for a in answers] == ["", "", ""]  # the Set-Cookie of one caller's answer is not replayed
    assert len({a["port"] for a in answers}) == 1  # keep-alive: one connection for all three


async def test_bodies_and_headers_as_httpx_sent_them(upstream: tuple[Upstream, str],
                                                     session: aiohttp.ClientSession) -> None:
    url = upstream[1] + "/json"
    as_json = await send_json(session, ADAPTER, spec(url, json={"a": [1, "é"]}, headers={"x-key": "k"}))
    assert as_json["headers"]["content-type"] == "application/json" and as_json["headers"]["x-key"] == "k"
    assert msgspec.json.decode(as_json["body"]) == {"a": [1, "é"]}
    own_type = await send_json(session, ADAPTER, spec(url, json={}, headers={"content-type": "application/x+json"}))
    assert own_type["headers"]["content-type"] == "application/x+json"
    raw = await send_json(session, ADAPTER, spec(url, content=b"raw bytes"))
    assert "content-type" not in raw["headers"] and raw["body"] == "raw bytes"  # none added, as before
    query = await send_json(session, ADAPTER, spec(url + "?api-version=1&x=a", method="GET",
                                                   params={"x": "b c/d", "alt": "sse"}))
    assert query["query"] == "api-version=1&x=b+c%2Fd&alt=sse"


@pytest.mark.parametrize("url, params", [
    ("https://h/v1/models/gemini-1.5:streamGenerateContent", {"alt": "sse"}),
    ("https://h/openai/deployments/d/chat?api-version=2024-10-21", {"api-version": "2025-01-01"}),
    ("https://h/a?b=1&b=2&c=3", {"c": "4", "d": "x y/z:+&é", "e": ""}),
    ("http://127.0.0.1:8080/v1/x?key=a/b+c", {"k": "v"}),
])
def test_params_make_the_query_httpx_made(url: str, params: dict[str, str]) -> None:
    assert str(_url(RequestSpec("GET", url, params=params))) == str(httpx.URL(url).copy_merge_params(params))


async def test_multipart_fields_and_file_as_a_server_reads_them(upstream: tuple[Upstream, str],
                                                                session: aiohttp.ClientSession) -> None:
    files = [("file", ("my clip é.wav", b"RIFF", "audio/wav"))]
    data = {"model": "whisper-1", "temperature": "0.2", "timestamp_granularities[]": ["word", "segment"]}
    response = await send(session, ADAPTER, spec(upstream[1] + "/form", files=files, data=data))
    assert msgspec.json.decode(response.content) == {
        "model": ["whisper-1"], "temperature": ["0.2"], "timestamp_granularities[]": ["word", "segment"],
        "file": [{"filename": "my clip é.wav", "content_type": "audio/wav", "bytes": "RIFF"}],
    }
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"


async def test_http_errors_go_to_the_adapter_and_redirects_are_not_followed(
        upstream: tuple[Upstream, str], session: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamError) as limited:
        await send(session, ADAPTER, spec(upstream[1] + "/limited", json={}))
    assert limited.value.status == 429 and limited.value.retry_after == 7.0  # headers reach it lower-cased
    assert "slow down" in str(limited.value)
    hits = len(upstream[0].hits)
    moved = await send(session, ADAPTER, spec(upstream[1] + "/moved", method="GET"))
    assert moved.status_code == 302 and upstream[0].hits[hits:] == ["/moved"]


async def test_a_finished_stream_keeps_its_connection_and_a_left_one_is_closed(
        upstream: tuple[Upstream, str], session: aiohttp.ClientSession) -> None:
    app, url = upstream
    async with open_stream(session, ADAPTER, spec(url + "/stream", method="GET"), TIMEOUTS) as events:
        assert [data async for _, data in events] == ["0", "1", "2"]
    ports = {(await send_json(session, ADAPTER, spec(url + "/json", json={})))["port"] for _ in range(2)}
    assert len(ports) == 1 and len(session.connector._conns) == 1  # type: ignore[union-attr]
    app.stream_abandoned.clear()
    async with open_stream(session, ADAPTER, spec(url + "/stream?n=500", method="GET"), TIMEOUTS) as events:
        assert (await anext(events))[1] == "0"
    # leaving the block early hangs up, so the provider stops generating
    assert await asyncio.to_thread(app.stream_abandoned.wait, 5)


class RawServer:
    """A TCP server that reads a request, then (after ``delay``) writes ``reply`` and closes the connection."""

    def __init__(self, reply: bytes = b"", delay: float = 0.0) -> None:
        self.reply, self.delay = reply, delay
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
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


PARTIAL = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"choi"
PARTIAL_STREAM = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" \
                 b"b\r\ndata: 1\n\n\n\r\n5\r\ndata:"


async def test_hang_ups_and_garbage_are_connection_errors_and_silence_a_timeout(
        session: aiohttp.ClientSession) -> None:
    servers = {"hang up": RawServer(), "mid-answer": RawServer(PARTIAL), "garbage": RawServer(b"HELLO\r\n\r\n"),
               "silent": RawServer(delay=2.0)}
    errors: dict[str, UpstreamError] = {}
    try:
        for name, server in servers.items():
            with pytest.raises(UpstreamError) as caught:
                await send_json(session, ADAPTER, spec(server.url, json={"model": "m", "messages": []}))
            errors[name] = caught.value
    finally:
        for server in servers.values():
            server.close()
    for name in ("hang up", "mid-answer", "garbage"):
        assert errors[name].error_type != "upstream_timeout" and errors[name].retryable, name
        assert "could not reach" in str(errors[name]), name
    assert errors["silent"].error_type == "upstream_timeout" and errors["silent"].retryable


async def test_a_stream_cut_mid_body_is_a_retryable_error(session: aiohttp.ClientSession) -> None:
    server = RawServer(PARTIAL_STREAM)
    try:
        async with open_stream(session, ADAPTER, spec(server.url, json={}), TIMEOUTS) as events:
            assert await anext(events) == (None, "1")
            with pytest.raises(UpstreamError) as cut:
                await anext(events)
    finally:
        server.close()
    assert cut.value.retryable and "could not reach" in str(cut.value)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = self_signed_cert(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("no openssl command to make a self-signed certificate")
    return made


async def test_tls_is_verified(self_signed: tuple[Path, Path], session: aiohttp.ClientSession) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve() -> None:
        try:
            conn, _ = sock.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
        except OSError:  # the client refuses our certificate mid-handshake
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(UpstreamError) as refused:
            await send_json(session, ADAPTER, spec(f"https://127.0.0.1:{sock.getsockname()[1]}/v1", json={}))
    finally:
        sock.close()
    assert "could not reach" in str(refused.value) and "Certificate" in str(refused.value)


async def test_timeouts_and_pool_follow_the_settings() -> None:
    settings = Settings(upstream_connect_timeout=3.0, upstream_read_timeout=9.0)
    client = make_http_client(settings, max_connections=7)
    try:
        assert (client.timeout.sock_connect, client.timeout.sock_read, client.timeout.total) == (3.0, 9.0, None)
        assert client.connector.limit == 7 and isinstance(client.cookie_jar, aiohttp.DummyCookieJar)  # type: ignore[union-attr]
        assert client.trust_env is False
    finally:
        await client.close()


def test_request_spec_without_params_keeps_its_url() -> None:
    url = "https://h/v1/chat/completions"
    assert _url(RequestSpec("POST", url)) is _url(RequestSpec("POST", url))  # parsed once, then cached
