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
import os
import socket
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from common.names import Names
from common.queue import enqueue
from common.redis import connect
from common.wire import Event, Job, Route, event_decoder, job_encoder
from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, ProcessGateway
from tests.test_resilience import auth, live_workers, sse_events, stream_text, wait_until

needs_redis = pytest.mark.skipif(not os.environ.get("REDIS_URL"),
                                 reason="separate processes need a real Redis (set REDIS_URL)")

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


@pytest.fixture
def patient_env(gateway_env: dict[str, str]) -> dict[str, str]:
    """Slow safety nets: a request that waits on one of them outlives every client timeout below."""
    return {**gateway_env, "MEGABRAIN_HEARTBEAT_TIMEOUT": "60", "MEGABRAIN_PICKUP_TIMEOUT": "30",
            "MEGABRAIN_REQUEST_TIMEOUT": "120"}


def _post(url: str, path: str, body: bytes, env: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(url + path, content=body, timeout=10,
                      headers={**auth(env), "content-type": "application/json", **headers})


@needs_redis
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


@needs_redis
def test_a_worker_that_cannot_run_a_job_says_so_at_once(patient_env: dict[str, str],
                                                       fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """Defence in depth behind the web tier's decode: jobs enqueued directly, bypassing it."""
    state, _ = fake_openai
    with ProcessGateway(patient_env) as gw:
        outcomes = asyncio.run(_run_bad_jobs(patient_env["REDIS_URL"], patient_env["MEGABRAIN_NAMESPACE"]))
        for name, event in outcomes:
            assert event is not None, f"{name}: no event within 10 s"
            assert event.kind == "error", name
            assert event.status in (400, 500), (name, event.status)
            envelope = json.loads(event.data)
            assert envelope["error"]["message"], name
        assert not state.requests  # none of them reached the upstream
        assert all(w.poll() is None for w in gw.workers)
