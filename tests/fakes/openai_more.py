"""OpenAI's endpoints beyond chat, embeddings and transcriptions, as strict as OpenAI's own:
legacy ``/completions``, served by the fake OpenAI app (``tests/fakes/openai_server.py``).

Each refuses what OpenAI refuses (a chat model on ``/completions``, ``suffix`` on a model without
fill-in-the-middle, ``echo`` with ``suffix``, ``best_of`` while streaming) with OpenAI's 400 or 404.
Answers are deterministic, so a test can compare what the client got with what was sent.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.openai_server import (
    BadRequest, Endpoint, Receive, Scope, Send, base_headers, send_error, send_json, token_text, _encode,
)

COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
SUFFIX_MODELS = ("gpt-3.5-turbo-instruct",)  # OpenAI: "suffix is only supported for gpt-3.5-turbo-instruct"


def completion_prompts(prompt: Any) -> list[str]:
    """One text per prompt: a string, strings, token ids or token arrays (ids joined by commas)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [",".join(map(str, prompt))]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [",".join(map(str, p)) for p in prompt]
    raise BadRequest("Invalid type for 'prompt'.", "prompt")


def fill_text(prompt: str, suffix: str | None, count: int) -> str:
    """The fake's answer: ``count`` tokens, marked with what it filled between (FIM) when a suffix came."""
    text = "".join(token_text(i) for i in range(count))
    return f"<fim {len(prompt)}|{len(suffix)}>" + text if suffix is not None else text


class CompletionsEndpoint(Endpoint):
    """``POST /v1/completions``."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("you must provide a model parameter", "model")
        model = body["model"]
        if model not in COMPLETION_MODELS:
            await send_error(send, self.state, serial, 404, "This is a chat model and not supported in the "
                             "v1/completions endpoint. Did you mean to use v1/chat/completions?", "model")
            return
        if "prompt" not in body:
            raise BadRequest("Missing required parameter: 'prompt'.", "prompt")
        prompts = completion_prompts(body["prompt"])
        suffix = body.get("suffix")
        if suffix is not None and model not in SUFFIX_MODELS:
            raise BadRequest(f"The model {model} does not support suffix.", "suffix")
        if suffix is not None and body.get("echo"):
            raise BadRequest("echo is not allowed with suffix.", "echo")
        stream = bool(body.get("stream"))
        if body.get("stream_options") is not None and not stream:
            raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             "stream_options")
        n, best_of = body.get("n", 1), body.get("best_of")
        if stream and isinstance(best_of, int) and best_of > 1:
            raise BadRequest("Cannot stream results with best_of greater than 1.", "best_of")
        logprobs = body.get("logprobs")
        if logprobs is not None and (not isinstance(logprobs, int) or not 0 <= logprobs <= 5):
            raise BadRequest("'logprobs' must be an integer between 0 and 5.", "logprobs")
        cap = body.get("max_tokens", 16)
        count = min(self.state.tokens, cap if isinstance(cap, int) else 16)
        finish = "length" if count == cap else "stop"
        texts = []
        for prompt in prompts:
            text = fill_text(prompt, suffix, count)
            texts += [(prompt + text if body.get("echo") else text)] * n
        prompt_tokens = sum(max(1, len(p) // 4) for p in prompts) + (max(1, len(suffix) // 4) if suffix else 0)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count * len(texts),
                 "total_tokens": prompt_tokens + count * len(texts)}
        created, cid = int(time.time()), f"cmpl-fake{serial}"
        if not stream:
            await send_json(send, serial, {
                "id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": finish}
                            for i, t in enumerate(texts)],
                "usage": usage})
            return
        head = {"id": cid, "object": "text_completion", "created": created, "model": model}
        frames = []
        for i, text in enumerate(texts):
            pieces = text.split(" ")
            for j, piece in enumerate(pieces):
                last = j == len(pieces) - 1
                frames.append({**head, "choices": [{"text": piece + ("" if last else " "), "index": i,
                                                    "logprobs": None, "finish_reason": finish if last else None}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append({**head, "choices": [], "usage": usage})
        await send({"type": "http.response.start", "status": 200,
                    "headers": base_headers(serial, b"text/event-stream")})
        for chunk in frames:
            await send({"type": "http.response.body", "body": b"data: " + _encode(chunk) + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
