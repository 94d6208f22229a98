"""Malformed request bodies, as a hostile client sends them: a deterministic generator, and a runner.

``malformed_bodies(count, seed)`` mutates valid chat-completions, embeddings, legacy completions, image,
speech and moderation bodies at the byte level
(invalid UTF-8, truncation, stray bytes) and at the value level (integers past 64 bits, numbers past any
float, deep nesting, lone surrogates, wrong types, huge strings, unknown fields), and adds documents that
are no request at all. tests/test_hardening.py sends them through a gateway and checks that none gets a
5xx. Run it against a running gateway to see latencies too::

    python -m tests.fuzz_bodies --url http://127.0.0.1:8000 --key mb-... --count 2000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SEEDS: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    (CHAT, {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 16, "temperature": 0.5, "seed": 7, "user": "u",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    (EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["hello", "world"], "dimensions": 8}),
    (EMBEDDINGS, {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "def f(", "suffix": "):", "max_tokens": 4,
                         "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat", "n": 2, "size": "1024x1024",
                                "quality": "low"}),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "hello", "response_format": "wav"}),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": [{"type": "text", "text": "hi"}]}),
]

# values a hostile client puts anywhere, as raw JSON text
HOSTILE_VALUES: list[bytes] = [
    b"18446744073709551616", b"-18446744073709551617", b"9223372036854775808", b"1" + b"0" * 400,
    b"1e999", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"1e-999", b"-0", b"0.0000001e-320",
    b'"\\ud800"', b'"\\udfff x"', b'"\xff"', b'"\xc3"', b'"\xed\xa0\x80"', b'"\x00"', b'"a\nb"',
    b'"' + b"x" * 100_000 + b'"', b"[" * 65 + b"]" * 65, b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 200 + b"1" + b"}" * 200, b"null", b"true", b"{}", b"[]", b'""', b"-1", b"0", b"1e308",
    b'{"\xff":1}', b'{"type":5}', b'[{"type":"text","text":7}]', b'[{"type":"image_url","image_url":7}]',
    b'[{"role":"user"}]', b'"' + b"m" * 5000 + b'"',
]


def _mutations() -> list[Callable[[random.Random, bytes], bytes]]:
    def flip(rng: random.Random, raw: bytes) -> bytes:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]

    def insert_invalid_utf8(rng: random.Random, raw: bytes) -> bytes:
        i = rng.randrange(len(raw))
        return raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xf0\x9f", b"\x80", b"\xc0\xaf"]) + raw[i:]

    def truncate(rng: random.Random, raw: bytes) -> bytes:
        return raw[:rng.randrange(len(raw))]

    def duplicate(rng: random.Random, raw: bytes) -> bytes:
        i, j = sorted(rng.sample(range(len(raw)), 2))
        return raw[:j] + raw[i:j] + raw[j:]

    def prefix(rng: random.Random, raw: bytes) -> bytes:
        return rng.choice([b"\xef\xbb\xbf", b" \t\n", b"\x00", b"//", b"]"]) + raw

    return [flip, insert_invalid_utf8, truncate, duplicate, prefix]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a document a value can be put (including the document's own keys)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _with_raw(doc: Any, path: tuple[Any, ...], raw: bytes) -> bytes:
    """``doc`` as JSON with the value at ``path`` replaced by the raw JSON text ``raw``."""
    marker = "\u0000MARK\u0000"
    if not path:
        return raw
    copy = json.loads(json.dumps(doc))
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = marker
    return json.dumps(copy).encode().replace(json.dumps(marker).encode(), raw)


def malformed_bodies(count: int = 1200, seed: int = 16) -> list[tuple[str, bytes]]:
    """``count`` (path, body) pairs, the same ones for the same seed."""
    rng = random.Random(seed)
    mutations = _mutations()
    bodies: list[tuple[str, bytes]] = [
        (CHAT, b""), (CHAT, b"   "), (CHAT, b"null"), (CHAT, b"[]"), (CHAT, b'"x"'), (CHAT, b"7"),
        (EMBEDDINGS, b"{}"), (CHAT, bytes(range(256))), (CHAT, b"\xff" * 64),
    ]
    while len(bodies) < count:
        path, doc = rng.choice(SEEDS)
        choice = rng.random()
        if choice < 0.35:  # a byte-level mutation of a valid body
            raw = json.dumps(doc).encode()
            for _ in range(rng.randint(1, 3)):
                raw = rng.choice(mutations)(rng, raw) or b"{"
            bodies.append((path, raw))
        elif choice < 0.85:  # a hostile value somewhere in a valid body
            where = rng.choice(list(_paths(doc))[1:])
            bodies.append((path, _with_raw(doc, where, rng.choice(HOSTILE_VALUES))))
        else:  # a hostile unknown field, or a hostile key name
            key = rng.choice([b'"x"', b'"\xff"', b'"\\ud800"', b'"' + b"k" * 300 + b'"', b'""'])
            raw = json.dumps(doc).encode()
            bodies.append((path, raw[:-1] + b"," + key + b":" + rng.choice(HOSTILE_VALUES) + b"}"))
    return bodies[:count]


def send_all(client: httpx.Client, base_url: str, key: str | None,
             bodies: list[tuple[str, bytes]]) -> list[tuple[str, bytes, int, float, bytes]]:
    """(path, body, status, seconds, response body) for each; a stream's body is read to its end."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    results = []
    for path, body in bodies:
        started = time.perf_counter()
        with client.stream("POST", base_url + path, content=body, headers=headers) as response:
            content = response.read()
        results.append((path, body, response.status_code, time.perf_counter() - started, content))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key")
    parser.add_argument("--count", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    with httpx.Client(timeout=30) as client:
        results = send_all(client, args.url, args.key, malformed_bodies(args.count, args.seed))
    statuses = Counter(status for _, _, status, _, _ in results)
    seconds = sorted(elapsed for _, _, _, elapsed, _ in results)
    print(f"{len(results)} bodies; statuses {dict(sorted(statuses.items()))}")
    print(f"latency: median {seconds[len(seconds) // 2] * 1000:.1f} ms, "
          f"p99 {seconds[int(len(seconds) * 0.99)] * 1000:.1f} ms, max {seconds[-1] * 1000:.1f} ms; "
          f"over 2 s: {sum(1 for s in seconds if s > 2)}")
    for path, body, status, elapsed, content in results:
        if status >= 500:
            print(f"  {status} {path} {body[:120]!r} -> {content[:200]!r}")


if __name__ == "__main__":
    main()
