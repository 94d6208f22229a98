"""A fake OpenAI upstream that speaks OpenAI's documented wire format, with a scriptable failure queue.

Strict per model family (``tests/fakes/strict.py``): a parameter, pair or field OpenAI refuses gets OpenAI's
own 400. Used by the gateway's tests (through ``ThreadedServer``) and by the benchmark (through the CLI), so the
streaming path precomputes its bytes and the endpoints are raw ASGI: a test must be able to see a client
disconnect (``streams_closed_early``) and to drop a connection without any response (``"reset"``).
See reference/provider-formats.md sections 1 and 2 for the shapes reproduced here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import random
import re
import struct
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Awaitable, Callable

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.routing import Route

from tests.fakes.strict import OPENAI_RULES, first_refusal

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_encode = msgspec.json.Encoder().encode
FINGERPRINT = "fp_fake"
DEFAULT_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "whisper-1", "gpt-3.5-turbo-instruct"]


@dataclass
class OpenAIFakeState:
    """What the fake does next; the test thread mutates it while the server thread reads it.

    ``failures`` is a FIFO script consumed one item per POST request: an int HTTP status, ``"reset"``,
    ``"midstream_error"``, ``"cut"``, ``"hang"`` or ``"malformed"`` (a 200 HTML page). ``hold_answers`` keeps
    every POST waiting (recorded, no byte sent, its failure not yet taken) while True: a test releases them
    all at once. ``usage_in`` says where a stream carries usage:
    ``"separate"`` (a ``choices: []`` chunk, only when ``stream_options.include_usage``), ``"null"``
    (same, with ``choices: null``), ``"finish"`` (on the finishing chunk, always) or ``"none"``.
    """

    tokens: int = 16
    latency: float = 0.0
    token_delay: float = 0.0
    token_batch: int = 1  # frames per write when token_delay is set: a fast upstream's bursts
    failures: list[Any] = field(default_factory=list)
    retry_after: str | float | None = None
    tool_calls: list[dict[str, Any]] | None = None
    require_key: str | None = None
    usage_in: str = "separate"
    reasoning: str = ""  # DeepSeek-style reasoning_content sent before the answer (streamed first)
    cached_tokens: int = 0  # reported in usage.prompt_tokens_details.cached_tokens
    fail_after_tokens: int = 2
    hang_seconds: float = 60.0
    hold_answers: bool = False  # every POST waits (recorded, no byte sent) while True: a test's gate
    image_size: int = 2048  # bytes of each generated image (tests/fakes/openai_more.py)
    speech_size: int = 20000  # bytes of each speech answer
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    requests: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # the 400 messages this fake answered, in order
    streams_open: int = 0
    streams_closed_early: int = 0
    streams_completed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _serial: int = field(default=0, repr=False)

    def take_failure(self) -> Any:
        """The next scripted failure, or None."""
        with self._lock:
            return self.failures.pop(0) if self.failures else None

    def record(self, entry: dict[str, Any]) -> int:
        """Log a request; returns its serial number (used in ids)."""
        with self._lock:
            self._serial += 1
            self.requests.append(entry)
            return self._serial

    def count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + delta)

    def reset(self) -> None:
        """Back to the defaults in place (the app keeps this object), so one server can serve many tests."""
        fresh = OpenAIFakeState()
        with self._lock:
            for f in fields(self):
                if f.name not in ("_lock", "_serial"):
                    setattr(self, f.name, getattr(fresh, f.name))


# --------------------------------------------------------------------------- raw ASGI helpers


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def base_headers(serial: int, content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"x-request-id", f"req_fake{serial}".encode())]


async def send_bytes(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = headers + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, serial: int, data: Any, status: int = 200) -> None:
    await send_bytes(send, status, _encode(data), base_headers(serial, b"application/json"))


async def wait_disconnect(receive: Receive) -> None:
    """Returns once the client is gone (call only after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def abort_connection(receive: Receive, send: Send, started: bool = False) -> None:
    """Drop the TCP connection without (finishing) a response, as a crashed upstream would.

    uvicorn gives no ASGI way to do this: before a response it would answer 500 instead. Its ``receive``
    is a bound method of the request cycle, which holds the transport, so abort that. Any other server:
    start a response and raise, which makes the server close the connection.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is not None:
        transport.abort()
        await wait_disconnect(receive)
        return
    if not started:
        await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ConnectionAbortedError("fake upstream reset")


# --------------------------------------------------------------------------- errors

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    413: ("invalid_request_error", None, "Request too large."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("service_unavailable_error", "server_is_overloaded", "The engine is currently overloaded, please try again later."),
}


def error_body(status: int, message: str | None = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; all four keys present, as the spec requires."""
    kind, default_code, default = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status}"))
    return {"error": {"message": message or default, "type": kind, "param": param, "code": code or default_code}}


async def send_error(send: Send, state: OpenAIFakeState, serial: int, status: int,
                     message: str | None = None, param: str | None = None, code: str | None = None) -> None:
    headers = base_headers(serial, b"application/json")
    if state.retry_after is not None and (status == 429 or status >= 500):
        headers.append((b"retry-after", str(state.retry_after).encode()))
    await send_bytes(send, status, _encode(error_body(status, message, param, code)), headers)


class BadRequest(Exception):
    """A 400 the endpoint answers with OpenAI's invalid_request_error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


# --------------------------------------------------------------------------- endpoint base


class Endpoint:
    """Raw ASGI endpoint: log the request, check the key, play the failure script, then ``handle``."""

    def __init__(self, state: OpenAIFakeState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self.read(scope, receive) if scope["method"] == "POST" else None
        entry = {"path": scope["path"], "method": scope["method"], "headers": headers, "body": body,
                 "at": time.monotonic()}
        serial = state.record(entry)
        if state.require_key is not None and headers.get("authorization") != f"Bearer {state.require_key}":
            await send_error(send, state, serial, 401)
            return
        for _ in range(6000):  # a minute at most
            if not (state.hold_answers and scope["method"] == "POST"):
                break
            await asyncio.sleep(0.01)
        failure = state.take_failure() if scope["method"] == "POST" else None
        if failure is not None and await self.fail(failure, receive, send, serial):
            return
        try:
            if isinstance(body, BadRequest):
                raise body
            await self.handle(scope, receive, send, serial, body, failure)
        except BadRequest as exc:
            state.refusals.append(exc.message)
            await send_error(send, state, serial, 400, exc.message, exc.param, exc.code)

    async def read(self, scope: Scope, receive: Receive) -> Any:
        """The decoded JSON body (None if empty), or a BadRequest to answer after logging."""
        raw = await read_body(receive)
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return BadRequest("We could not parse the JSON body of your request.")

    async def fail(self, failure: Any, receive: Receive, send: Send, serial: int) -> bool:
        """Play a generic failure; False leaves stream-shaped ones (``cut``, ``midstream_error``) to ``handle``."""
        if isinstance(failure, int):
            await send_error(send, self.state, serial, failure)
        elif failure == "reset":
            await abort_connection(receive, send)
        elif failure == "hang":
            try:
                await asyncio.wait_for(wait_disconnect(receive), self.state.hang_seconds)
            except asyncio.TimeoutError:
                await abort_connection(receive, send)
        elif failure == "malformed":  # a 200 that is no answer: a proxy's page where the JSON or SSE should be
            await send_bytes(send, 200, b"<html><body>Service starting</body></html>",
                             base_headers(serial, b"text/html"))
        else:
            return False
        return True

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- chat completions


def token_text(i: int) -> str:
    return f"tok{i} "


@functools.lru_cache(maxsize=8192)
def token_choice_bytes(i: int) -> bytes:
    """The ``choices`` element of content chunk ``i``: identical for every request, so built once."""
    return _encode({"index": 0, "delta": {"content": token_text(i)}, "logprobs": None, "finish_reason": None})


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return 0


def prompt_tokens(messages: list[Any]) -> int:
    """Deterministic stand-in for a tokenizer: message characters / 4, at least 1."""
    chars = sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return max(1, chars // 4)


def split_arguments(arguments: str, size: int = 8) -> list[str]:
    return [arguments[i:i + size] for i in range(0, len(arguments), size)] or [""]


def validate_chat(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("[] is too short - 'messages'" if messages == [] else "Missing required parameter: 'messages'.", "messages")
    for i, message in enumerate(messages):  # as strict as OpenAI about the parts it reads
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            if not isinstance(part, dict) or (part.get("type") == "text" and not isinstance(part.get("text"), str)):
                raise BadRequest(f"Invalid type for 'messages[{i}].content[{j}]'.", f"messages[{i}].content[{j}]")
    if body.get("reasoning_effort") not in (None, "minimal", "low", "medium", "high"):
        raise BadRequest("Invalid value for 'reasoning_effort'.", "reasoning_effort")
    problem = first_refusal(OPENAI_RULES, body["model"], body)  # per model family, as OpenAI refuses
    if problem is not None:
        raise BadRequest(*problem)
    return body


@dataclass
class ChatPlan:
    """Everything one reply needs, decided once per request."""

    chat_id: str
    created: int
    model: str
    tokens: int
    finish_reason: str
    usage: dict[str, Any]
    tool_calls: list[dict[str, Any]] | None
    reasoning: str = ""


def plan_chat(state: OpenAIFakeState, body: dict[str, Any], serial: int) -> ChatPlan:
    tool_calls = [dict(c) for c in state.tool_calls] if state.tool_calls else None
    tokens, finish = state.tokens, "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if tool_calls:
        tokens, finish = sum(len(split_arguments(c["arguments"])) for c in tool_calls), "tool_calls"
    elif isinstance(limit, int) and 0 < limit < tokens:
        tokens, finish = limit, "length"
    prompt = prompt_tokens(body["messages"])
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    if state.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": min(prompt, state.cached_tokens)}
    return ChatPlan(f"chatcmpl-fake{serial}", int(time.time()), body["model"], tokens, finish, usage, tool_calls,
                    state.reasoning)


def tool_call_objects(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": c.get("id") or f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}} for i, c in enumerate(calls)]


def chat_completion(plan: ChatPlan, n: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if plan.tool_calls:
        message["tool_calls"] = tool_call_objects(plan.tool_calls)
    else:
        message["content"] = "".join(token_text(i) for i in range(plan.tokens))
    if plan.reasoning:
        message["reasoning_content"] = plan.reasoning
    choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": plan.finish_reason} for i in range(n)]
    usage = dict(plan.usage)
    usage["completion_tokens"] *= n
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": plan.chat_id, "object": "chat.completion", "created": plan.created, "model": plan.model,
            "choices": choices, "usage": usage, "system_fingerprint": FINGERPRINT}


class ChunkWriter:
    """Builds ``data: {chunk}\\n\\n`` frames by gluing a per-request prefix to precomputed choice bytes."""

    def __init__(self, plan: ChatPlan, usage_in: str, include_usage: bool) -> None:
        self.plan = plan
        self.prefix = b"".join([
            b'data: {"id":"', plan.chat_id.encode(), b'","object":"chat.completion.chunk","created":',
            str(plan.created).encode(), b',"model":', _encode(plan.model),
            b',"system_fingerprint":"', FINGERPRINT.encode(), b'","choices":',
        ])
        self.usage_in = usage_in
        self.usage_chunk = include_usage and usage_in in ("separate", "null")
        self.suffix = b',"usage":null}\n\n' if self.usage_chunk else b"}\n\n"

    def frame(self, choice: bytes) -> bytes:
        return b"".join([self.prefix, b"[", choice, b"]", self.suffix])

    def choice(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _encode({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})

    def opening(self) -> list[bytes]:
        """Role chunk (text) or the role + tool-call fragments (tool calls), as OpenAI streams them."""
        words = re.findall(r"\S+\s*", self.plan.reasoning)
        thinking = [self.frame(self.choice({"reasoning_content": word})) for word in words]
        if not self.plan.tool_calls:
            return [self.frame(self.choice({"role": "assistant", "content": ""}))] + thinking
        return thinking

    def body(self, count: int | None = None) -> list[bytes]:
        if self.plan.tool_calls:
            return self.tool_frames()[:count]
        return [self.frame(token_choice_bytes(i)) for i in range(self.plan.tokens if count is None else count)]

    def tool_frames(self) -> list[bytes]:
        frames = []
        for index, call in enumerate(tool_call_objects(self.plan.tool_calls or [])):
            head = {"index": index, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            delta: dict[str, Any] = {"tool_calls": [head]}
            if index == 0:
                delta = {"role": "assistant", "content": None, "tool_calls": [head]}
            frames.append(self.frame(self.choice(delta)))
            for piece in split_arguments(call["function"]["arguments"]):
                part = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                frames.append(self.frame(self.choice(part)))
        return frames

    def closing(self) -> list[bytes]:
        finish = self.choice({}, self.plan.finish_reason)
        if self.usage_in == "finish":
            finish_frame = b"".join([self.prefix, b"[", finish, b'],"usage":', _encode(self.plan.usage), b"}\n\n"])
        else:
            finish_frame = self.frame(finish)
        frames = [finish_frame]
        if self.usage_chunk:
            choices = b"[]" if self.usage_in == "separate" else b"null"
            frames.append(b"".join([self.prefix, choices, b',"usage":', _encode(self.plan.usage), b"}\n\n"]))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def midstream_error(self) -> bytes:
        return b"data: " + _encode(error_body(500)) + b"\n\n"


SSE_TYPE = b"text/event-stream; charset=utf-8"


class ChatEndpoint(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        body = validate_chat(body)
        plan = plan_chat(self.state, body, serial)
        if body.get("stream"):
            stream_options = body.get("stream_options") or {}
            writer = ChunkWriter(plan, self.state.usage_in, bool(stream_options.get("include_usage")))
            await self.stream(receive, send, serial, writer, failure)
            return
        if self.state.latency:
            await asyncio.sleep(self.state.latency)
        n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
        if failure == "cut":
            payload = _encode(chat_completion(plan, n))
            headers = base_headers(serial, b"application/json") + [(b"content-length", str(len(payload)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            await abort_connection(receive, send, started=True)
        elif failure == "midstream_error":
            await send_error(send, self.state, serial, 500)
        else:
            await send_json(send, serial, chat_completion(plan, n))

    def frames(self, writer: ChunkWriter, failure: Any) -> list[bytes]:
        if failure == "cut":
            return writer.opening() + writer.body(self.state.fail_after_tokens)
        if failure == "midstream_error":
            return writer.opening() + writer.body(self.state.fail_after_tokens) + [writer.midstream_error()]
        return writer.opening() + writer.body() + writer.closing()

    async def stream(self, receive: Receive, send: Send, serial: int, writer: ChunkWriter, failure: Any) -> None:
        """Send the frames; a watcher cancels us when the client leaves, so the early close is counted."""
        state = self.state
        frames = self.frames(writer, failure)
        state.count("streams_open")
        me = asyncio.current_task()
        gone = asyncio.Event()
        done = False

        async def watch() -> None:
            await wait_disconnect(receive)
            if not done and me is not None:
                gone.set()
                me.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": base_headers(serial, SSE_TYPE) + [(b"cache-control", b"no-cache")]})
            if state.latency:
                await asyncio.sleep(state.latency)
            await self.write_frames(send, frames, state.token_delay, state.token_batch)
            done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if not gone.is_set():  # the watcher may see the client leave while the last frames go out
                state.count("streams_completed")
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            if me is not None:
                me.uncancel()
        finally:
            watcher.cancel()
            if gone.is_set():
                state.count("streams_closed_early")

    @staticmethod
    async def write_frames(send: Send, frames: list[bytes], delay: float, batch: int = 1) -> None:
        if not delay:
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
            return
        for i in range(0, len(frames), batch):
            if i:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": b"".join(frames[i:i + batch]), "more_body": True})


# --------------------------------------------------------------------------- embeddings


def embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """(seed text, token count) per input: a string, strings, a token array or token arrays."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string or array.", "input")
    if all(isinstance(v, int) for v in value):
        value = [value]
    items = []
    for v in value:
        if isinstance(v, str) and v:
            items.append((v, max(1, len(v) // 4)))
        elif isinstance(v, list) and v and all(isinstance(t, int) for t in v):
            items.append((",".join(map(str, v)), len(v)))
        else:
            raise BadRequest("'input' items must be non-empty strings or token arrays.", "input")
    return items


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """Deterministic values in [-1, 1), already float32-exact so float and base64 answers agree."""
    rng = random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
    packed = struct.pack(f"<{dimensions}f", *(rng.uniform(-1, 1) for _ in range(dimensions)))
    return list(struct.unpack(f"<{dimensions}f", packed))


def encode_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class EmbeddingsEndpoint(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BadRequest("you must provide a model parameter", "model")
        if failure is not None:
            await send_error(send, self.state, serial, 500)
            return
        items = embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", 8)
        if not isinstance(dimensions, int) or dimensions < 1:
            raise BadRequest("'dimensions' must be a positive integer.", "dimensions")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        if self.state.latency:
            await asyncio.sleep(self.state.latency)
        data = []
        for index, (text, _) in enumerate(items):
            vector = embedding_vector(text, dimensions)
            data.append({"object": "embedding", "index": index,
                         "embedding": encode_base64(vector) if fmt == "base64" else vector})
        used = sum(count for _, count in items)
        await send_json(send, serial, {"object": "list", "data": data, "model": body["model"],
                                       "usage": {"prompt_tokens": used, "total_tokens": used}})


# --------------------------------------------------------------------------- audio transcriptions


def subtitle_time(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def transcript_text(text: str, fmt: str, duration: float) -> str:
    if fmt == "srt":
        return f"1\n{subtitle_time(0, ',')} --> {subtitle_time(duration, ',')}\n{text}\n\n"
    if fmt == "vtt":
        return f"WEBVTT\n\n{subtitle_time(0, '.')} --> {subtitle_time(duration, '.')}\n{text}\n\n"
    return text


def verbose_transcript(text: str, duration: float, granularities: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"task": "transcribe", "language": "english", "duration": duration, "text": text}
    if not granularities or "segment" in granularities:
        out["segments"] = [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": " " + text,
                            "tokens": [50364], "temperature": 0.0, "avg_logprob": -0.25,
                            "compression_ratio": 1.0, "no_speech_prob": 0.01}]
    if "word" in granularities:
        words = text.split()
        step = duration / max(1, len(words))
        out["words"] = [{"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)} for i, w in enumerate(words)]
    out["usage"] = {"type": "duration", "seconds": max(1, round(duration))}
    return out


class TranscriptionEndpoint(Endpoint):
    async def read(self, scope: Scope, receive: Receive) -> Any:
        """Parse the multipart body; files are logged as name/type/size and their bytes kept aside."""
        try:
            form = await Request(scope, receive).form()
        except Exception:
            return BadRequest("Could not parse multipart form.")
        fields: dict[str, Any] = {}
        file_bytes: dict[str, bytes] = {}
        for key in set(form.keys()):
            values = []
            for value in form.getlist(key):
                if isinstance(value, UploadFile):
                    data = await value.read()
                    file_bytes[key] = data
                    values.append({"filename": value.filename, "content_type": value.content_type, "size": len(data)})
                else:
                    values.append(value)
            fields[key] = values if len(values) > 1 or key.endswith("[]") else values[0]
        fields["_file_bytes"] = file_bytes.get("file")
        return fields

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("Expected multipart/form-data with 'file' and 'model'.")
        data = body.get("_file_bytes")
        upload = body.get("file")
        if not isinstance(upload, dict) or data is None:
            raise BadRequest("Missing required parameter: 'file'.", "file")
        if "." not in (upload.get("filename") or "").strip("."):
            raise BadRequest("Unrecognized file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']", "file")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("Missing required parameter: 'model'.", "model")
        if failure is not None:
            await send_error(send, self.state, serial, 500)
            return
        if self.state.latency:
            await asyncio.sleep(self.state.latency)
        await self.reply(send, serial, body, f"transcribed {len(data)} bytes")

    async def reply(self, send: Send, serial: int, body: dict[str, Any], text: str) -> None:
        fmt = body.get("response_format") or "json"
        duration = 1.0
        if fmt == "json":
            await send_json(send, serial, {"text": text, "usage": {"type": "duration", "seconds": 1}})
        elif fmt == "verbose_json":
            granularities = body.get("timestamp_granularities[]") or []
            await send_json(send, serial, verbose_transcript(text, duration, list(granularities)))
        elif fmt in ("text", "srt", "vtt"):
            payload = transcript_text(text, fmt, duration).encode()
            await send_bytes(send, 200, payload, base_headers(serial, b"text/plain; charset=utf-8"))
        else:
            raise BadRequest(f"Invalid response_format {fmt!r}.", "response_format")


# --------------------------------------------------------------------------- models


class ModelsEndpoint(Endpoint):
    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        wanted = scope.get("path_params", {}).get("model_id")
        objects = [{"id": m, "object": "model", "created": 1686935002, "owned_by": "openai"} for m in self.state.models]
        if wanted is None:
            await send_json(send, serial, {"object": "list", "data": objects})
            return
        match = [o for o in objects if o["id"] == wanted]
        if match:
            await send_json(send, serial, match[0])
        else:
            await send_error(send, self.state, serial, 404, f"The model '{wanted}' does not exist")


# --------------------------------------------------------------------------- app and CLI


def create_openai_app(state: OpenAIFakeState) -> Starlette:
    """Every route is served bare and under ``/v1``."""
    from tests.fakes import openai_more  # its endpoints build on this module's

    chat, embeddings = ChatEndpoint(state), EmbeddingsEndpoint(state)
    audio, models = TranscriptionEndpoint(state), ModelsEndpoint(state)
    completions, images = openai_more.CompletionsEndpoint(state), openai_more.ImagesEndpoint(state)
    speech, moderations = openai_more.SpeechEndpoint(state), openai_more.ModerationsEndpoint(state)
    fim = openai_more.FimEndpoint(state)  # Mistral's, for a fake Mistral/Codestral base URL
    edits = openai_more.ImageEditsEndpoint(state)
    routes = []
    for prefix in ("", "/v1"):
        routes += [
            Route(f"{prefix}/completions", completions, methods=["POST"]),
            Route(f"{prefix}/images/generations", images, methods=["POST"]),
            Route(f"{prefix}/audio/speech", speech, methods=["POST"]),
            Route(f"{prefix}/moderations", moderations, methods=["POST"]),
            Route(f"{prefix}/fim/completions", fim, methods=["POST"]),
            Route(f"{prefix}/images/edits", edits, methods=["POST"]),
            Route(f"{prefix}/chat/completions", chat, methods=["POST"]),
            Route(f"{prefix}/embeddings", embeddings, methods=["POST"]),
            Route(f"{prefix}/audio/transcriptions", audio, methods=["POST"]),
            Route(f"{prefix}/models", models, methods=["GET"]),
            Route(f"{prefix}/models/{{model_id:path}}", models, methods=["GET"]),
        ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake OpenAI upstream for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--usage-in", default="separate", choices=["separate", "null", "finish", "none"])
    parser.add_argument("--require-key", default=None)
    args = parser.parse_args(argv)
    state = OpenAIFakeState(tokens=args.tokens, latency=args.latency, token_delay=args.token_delay,
                            usage_in=args.usage_in, require_key=args.require_key)
    state.requests = _NoLog()
    state.refusals = _NoLog()
    uvicorn.run(create_openai_app(state), host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


class _NoLog(list):
    """The CLI serves a benchmark: keeping every request body would grow without bound."""

    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()
