"""A hostile client's reproductions, through real ``megabrain web`` and ``megabrain worker`` processes.

Bodies the worker could not run, repeated forwarding headers, SIGKILLed workers, prompts left in Redis,
WebSocket upgrades. Each test bounds its waits with generous client timeouts and sets the gateway's own
slow safety nets (heartbeat timeout) far beyond them, so a test can only pass through the fast path it
is about; how fast that path is, is measured by the benchmark and stated in the README.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
import msgspec

from common.names import Names
from common.queue import enqueue
from common.redis import connect
from common.wire import Event, Job, Route, event_decoder, job_encoder
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import (EXPECTED, GatewayHarness, ProcessGateway, auth, live_workers, reassemble, sse_data,
                           wait_until)

# bodies the web tier used to accept and the worker could not decode (or forward): each must be a 400
UNRUNNABLE = {
    "invalid UTF-8 in an unknown field": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                                          b'"x":"\xff"}', "x"),
    "invalid UTF-8 in a key name": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                                    b'"\xff":1}', None),
    "1e999 in an unknown field": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                                  b'"x":1e999}', "x"),
    "2^64 max_tokens": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                        b'"max_tokens":18446744073709551616}', "max_tokens"),
    "2^64 seed": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
                  b'"seed":-18446744073709551616}', "seed"),
    "2^70 deep in a message": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi",'
                               b'"extra":{"n":[1,1180591620717411303424]}}]}', "messages[0].extra.n[1]"),
    "nested 1,000 deep": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x":'
                          + b"[" * 1000 + b"]" * 1000 + b"}", None),
    "nested 100 deep": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x":'
                        + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}", None),
}
UNRUNNABLE_EMBEDDINGS = {
    "invalid UTF-8 in an unknown field": (b'{"model":"text-embedding-3-small","input":"hi","x":"\xff"}', "x"),
    "2^64 dimensions": (b'{"model":"text-embedding-3-small","input":"hi","dimensions":18446744073709551616}',
                        "dimensions"),
    "1e999 in input tokens": (b'{"model":"text-embedding-3-small","input":[1,1e999]}', "input[1]"),
}


def _post(url: str, path: str, body: bytes, env: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(url + path, content=body, timeout=10,
                      headers={**auth(env), "content-type": "application/json", **headers})


def test_bodies_the_worker_cannot_run_get_400_through_web_and_worker(
        patient_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    with ProcessGateway(patient_env, worker_providers="openai") as gw:
        for path, cases in (("/v1/chat/completions", UNRUNNABLE), ("/v1/embeddings", UNRUNNABLE_EMBEDDINGS)):
            for name, (body, param) in cases.items():
                response = _post(gw.url, path, body, patient_env)
                assert response.status_code == 400, (name, response.text)
                error = response.json()
                assert error["error_type"] == "invalid_request", name
                if param:
                    assert error["error"]["param"] == param, (name, error)
        # the gateway stays healthy and serves the next request; no bad body reached the upstream
        good = _post(gw.url, "/v1/chat/completions",
                     b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x":"\\u00ff"}',
                     patient_env)
        assert good.status_code == 200, good.text
        assert len(state.requests) == 1
        assert gw.web is not None and gw.web.poll() is None


# --------------------------------------------------------------------------- the worker's own guard


class Listener:
    """A stand-in web process: its own reply channel, read directly from Redis."""

    def __init__(self, redis_url: str) -> None:
        self.redis = connect(redis_url, pubsub=True)
        self.channel = f"test-reply-{uuid.uuid4().hex}"
        self.pubsub = self.redis.pubsub()

    async def __aenter__(self) -> "Listener":
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.pubsub.aclose()
        await self.redis.aclose()

    async def first_final_event(self, timeout: float) -> Event | None:
        """The first result/error/done event, or None when none came within ``timeout`` seconds."""
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is None:
                continue
            event = event_decoder.decode(message["data"])
            if event.kind in ("result", "error", "done"):
                return event
        return None


def _job(channel: str, body: bytes) -> Job:
    return Job(kind="chat", request_id=uuid.uuid4().hex, reply_channel=channel, attempt=0,
               plan=[Route("openai", "openai/gpt-4o-mini", "gpt-4o-mini")], deadline=time.time() + 60, body=body)


async def _run_bad_jobs(redis_url: str, namespace: str) -> list[tuple[str, Event | None]]:
    names = Names(namespace)
    redis = connect(redis_url)
    outcomes: list[tuple[str, Event | None]] = []
    try:
        bad_bodies = {"undecodable body": b'{"model":"gpt-4o-mini","x":"\xff"}',
                      "not an object": b"[1, 2, 3]"}
        for name, body in bad_bodies.items():
            async with Listener(redis_url) as listener:
                job = _job(listener.channel, body)
                await enqueue(redis, names, "openai", "serve", f"{job.request_id}-0-0", job_encoder.encode(job),
                              expires_s=30)
                outcomes.append((name, await listener.first_final_event(10)))
        # a payload that is not a Job at all, but still says where its answer goes
        async with Listener(redis_url) as listener:
            request_id = uuid.uuid4().hex
            broken = msgspec.msgpack.encode({"kind": "chat", "request_id": request_id, "attempt": 0,
                                             "reply_channel": listener.channel, "plan": "nonsense"})
            await enqueue(redis, names, "openai", "serve", f"{request_id}-0-0", broken, expires_s=30)
            outcomes.append(("payload that is not a Job", await listener.first_final_event(10)))
    finally:
        await redis.aclose()
    return outcomes


def test_a_worker_that_cannot_run_a_job_says_so_at_once(patient_env: dict[str, str],
                                                       fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Defence in depth behind the web tier's decode: jobs enqueued directly, bypassing it."""
    state, _ = fake_openai
    with ProcessGateway(patient_env) as gw:
        outcomes = asyncio.run(_run_bad_jobs(patient_env["REDIS_URL"], patient_env["MEGABRAIN_NAMESPACE"]))
        for name, event in outcomes:
            assert event is not None, f"{name}: no event within 10 s"
            assert event.kind == "error", name
            envelope = json.loads(event.data)
            # README: 500 internal_error, "a worker could not run the request (a bug; answered at once, never
            # left to time out)": a job the web tier would have refused can only come from a bug
            assert (event.status, envelope["error_type"]) == (500, "internal_error"), (name, event.status, envelope)
            assert envelope["error"]["message"], name
        assert not state.requests  # none of them reached the upstream
        assert all(w.poll() is None for w in gw.workers)


# --------------------------------------------------------------------------- forwarding headers


@pytest.mark.usefixtures("clear_of_window_edge")  # counts per minute (tests/windows.py)
def test_repeated_forwarded_for_headers_cannot_dodge_the_per_ip_limit(gateway_env: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Behind one trusted proxy, a client's own X-Forwarded-For line (sent first, varied every time) is
    joined with the proxy's line: the client is still the right-most entry, the one the proxy appended."""
    config = tmp_path / "megabrain.toml"
    config.write_text('[limits]\nfree_requests_per_minute = 3\nanonymous_requests_per_day = 100\n'
                      'trusted_proxy_hops = 1\n\n[[models]]\nid = "openai/gpt-4o-mini"\nfree = true\n')
    env = {**gateway_env, "MEGABRAIN_CONFIG": str(config)}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with ProcessGateway(env) as gateway, httpx.Client(timeout=20) as client:
        statuses = []
        for n in range(6):
            headers = [("content-type", "application/json"),
                       ("x-forwarded-for", f"198.51.100.{n}, 10.0.0.9"),  # the client's own line
                       ("x-forwarded-for", "203.0.113.7")]  # the line the proxy appended
            statuses.append(client.post(gateway.url + "/v1/chat/completions", content=json.dumps(body),
                                        headers=headers).status_code)
        # one line alone, the proxy's, is the same client
        statuses.append(client.post(gateway.url + "/v1/chat/completions", json=body,
                                    headers={"x-forwarded-for": "203.0.113.7"}).status_code)
        other = client.post(gateway.url + "/v1/chat/completions", json=body,
                            headers=[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "203.0.113.8")])
    assert statuses == [200, 200, 200, 429, 429, 429, 429]
    assert other.status_code == 200  # the right-most entry of the joined lines is another client


# --------------------------------------------------------------------------- protocol edges


def test_a_websocket_upgrade_post_gets_an_answer(gateway_env: dict[str, str],
                                                 fake_openai: tuple[OpenAIFakeState, str]) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with ProcessGateway(gateway_env) as gateway:
        request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                   f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Authorization: Bearer {gateway_env['MEGABRAIN_TEST_API_KEY']}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while b"error_type" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        # answered at once in the envelope (uvicorn passes the body of an upgrade request to the protocol
        # switch, which ws="none" refuses, so the route sees no body and says why)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"no WebSocket API" in answer
        health = httpx.get(gateway.url + "/health", timeout=10,
                           headers={"connection": "Upgrade", "upgrade": "websocket"})
        assert health.status_code == 200
        # malformed framing gets uvicorn's own plain-text 400 (documented in the README)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")


# --------------------------------------------------------------------------- dead workers, prompts in Redis


async def _keys_holding(redis_url: str, needle: bytes) -> list[str]:
    """Every key in the database whose value contains ``needle`` (strings, hashes, lists, sets, zsets)."""
    redis = connect(redis_url)
    found = []
    try:
        async for key in redis.scan_iter(count=1000):
            kind = (await redis.type(key)).decode()
            if kind == "string":
                values = [await redis.get(key) or b""]
            elif kind == "hash":
                values = [*(await redis.hgetall(key)).items()]
                values = [b for pair in values for b in pair]
            elif kind == "list":
                values = await redis.lrange(key, 0, -1)
            elif kind == "set":
                values = list(await redis.smembers(key))
            elif kind == "zset":
                values = await redis.zrange(key, 0, -1)
            else:
                values = []
            if any(needle in value for value in values):
                found.append(key.decode())
    finally:
        await redis.aclose()
    return found


def test_sigkill_of_every_worker_mid_stream_ends_each_stream_and_leaves_no_prompt(
        patient_env: dict[str, str], fake_openai: tuple[OpenAIFakeState, str]) -> None:
    state, _ = fake_openai
    state.token_delay = 0.5  # 16 tokens: 8 s, and the workers die after the second
    secret = f"prompt-{uuid.uuid4().hex}"
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": secret}]}
    streams = 4
    with ProcessGateway(patient_env, workers=2) as gw:
        assert wait_until(lambda: live_workers(gw.url) == 2, 15)
        started = concurrent.futures.ThreadPoolExecutor(streams)

        def one_stream(barrier: Any) -> list[str]:
            # the read timeout is far below the 60 s heartbeat timeout: only the liveness key can end it
            with httpx.stream("POST", gw.url + "/v1/chat/completions", headers=auth(patient_env), timeout=30,
                              json=body) as response:
                assert response.status_code == 200
                events = sse_data(response)
                payloads = [next(events), next(events)]
                barrier.wait(20)
                payloads += list(events)
            return payloads

        import threading
        barrier = threading.Barrier(streams + 1)
        futures = [started.submit(one_stream, barrier) for _ in range(streams)]
        barrier.wait(30)  # every stream has tokens
        assert wait_until(lambda: len(state.requests) == streams, 5)
        assert {w.pid for w in gw.workers} and all(w.poll() is None for w in gw.workers)
        for worker in gw.workers:
            worker.kill()
        results = [f.result(30) for f in futures]
        started.shutdown()
        for payloads in results:
            last = json.loads(payloads[-1])
            assert last["error"]["type"] == "temporarily_unavailable", payloads[-1]
            assert "[DONE]" not in payloads
            text = reassemble(payloads[:-1])["text"]
            assert text and EXPECTED.startswith(text)
        assert len(state.requests) == streams  # nothing was re-run after tokens went out
        # the web tier stays healthy
        assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
        redis_url = patient_env["REDIS_URL"]
        assert wait_until(lambda: not asyncio.run(_keys_holding(redis_url, secret.encode())), 10, 0.5), \
            asyncio.run(_keys_holding(redis_url, secret.encode()))


# --------------------------------------------------------------------------- fuzz


def test_fuzzed_bodies_get_no_5xx(gateway: GatewayHarness, gateway_env: dict[str, str],
                                  fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """1,200 malformed bodies (tests/fuzz_bodies.py) through the web tier and a worker: each gets a clear
    answer in the envelope, never a 5xx, and the gateway serves normally afterwards."""
    from tests.fuzz_bodies import malformed_bodies, send_all

    bodies = malformed_bodies(1200)
    assert len({body for _, body in bodies}) > 1000
    with httpx.Client(timeout=20) as client:
        results = send_all(client, gateway.url, gateway_env["MEGABRAIN_TEST_API_KEY"], bodies)
        server_errors = [(path, body[:200], status, content[:300])
                         for path, body, status, _, content in results if status >= 500]
        assert not server_errors
        for path, body, status, _, content in results:
            if status >= 400:
                assert json.loads(content)["error_type"], (path, body[:200], content[:300])
        assert sum(1 for r in results if r[2] == 400) > 900  # most are refused by the decode itself
        good = client.post(gateway.url + "/v1/chat/completions", headers=auth(gateway_env),
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert good.status_code == 200
