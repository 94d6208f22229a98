"""The OpenAI-compatible family: OpenAI itself and every provider that speaks its Chat Completions API.

The client's body is forwarded nearly as-is (unknown fields pass through). Per-provider differences are
data in the registry (``Upstream.quirks``), applied here:

- ``max_tokens_field``: ``"max_tokens"`` renames ``max_completion_tokens`` for providers that reject it;
- ``no_stream_options``: the provider rejects ``stream_options`` (usage is then read where it appears);
- ``flatten_content``: text-part arrays become plain strings;
- ``drop_fields``: fields the provider rejects;
- ``reasoning_object``: the provider takes OpenRouter's ``reasoning`` object and ``reasoning_details``
  as they are (OpenRouter itself); everyone else gets the flat ``reasoning_effort`` only, and assistant
  messages lose the reasoning fields OpenAI would reject.

Answers: ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (Groq, Ollama) become the canonical
``reasoning`` text plus a ``reasoning.text`` detail, streamed as they arrive.
"""

from __future__ import annotations

from typing import Any

import msgspec

from workers.providers import reasoning
from workers.providers.base import (
    RequestSpec,
    Upstream,
    UpstreamError,
    classify_status,
    error_message_from_json,
    malformed,
    retry_after_seconds,
)

_GATEWAY_FIELDS = ("models", "provider", "route", "transforms")  # ours (or OpenRouter's), never forwarded
_REASONING_FIELDS = ("reasoning", "reasoning_details")  # canonical message fields OpenAI does not take
FORMAT = "openai-compatible"  # reasoning_details format of text reasoning from this family


def _effort_for_budget(tokens: int) -> str:
    """A token budget → the nearest effort, for upstreams that only take ``reasoning_effort``."""
    return "low" if tokens < 4096 else "medium" if tokens < 16384 else "high"


def translate_reasoning(payload: dict[str, Any], quirks: dict[str, Any]) -> None:
    """``reasoning`` → ``reasoning_effort`` (never the raw object, which OpenAI rejects)."""
    if quirks.get("reasoning_object"):
        return
    asked = reasoning.requested(payload)
    raw = payload.pop("reasoning", None)
    if asked is not None and "reasoning_effort" not in payload:
        payload["reasoning_effort"] = asked.effort or _effort_for_budget(asked.max_tokens or 0)
    elif asked is None and isinstance(raw, dict) and payload.get("reasoning_effort") not in (None, "none"):
        payload.pop("reasoning_effort")  # reasoning: {enabled: false} wins over a flat effort
    if any(isinstance(m, dict) and any(f in m for f in _REASONING_FIELDS) for m in payload.get("messages") or ()):
        payload["messages"] = [
            {k: v for k, v in m.items() if k not in _REASONING_FIELDS} if isinstance(m, dict) else m
            for m in payload["messages"]]


def canonical_reasoning(part: dict[str, Any], index: int = 0) -> None:
    """Add the canonical ``reasoning`` / ``reasoning_details`` to a message or delta that has only a vendor's."""
    text = part.get("reasoning_content") if isinstance(part.get("reasoning_content"), str) else None
    if text is None and isinstance(part.get("reasoning"), str):
        text = part["reasoning"]
    if not text:
        return
    part.setdefault("reasoning", text)
    part.setdefault("reasoning_details", [reasoning.text_detail(text, FORMAT, index)])
# Providers whose embeddings endpoint honours encoding_format=base64 (others get asked for floats).
_BASE64_EMBEDDINGS = frozenset({"openai", "azure"})


def auth_headers(up: Upstream) -> dict[str, str]:
    headers = dict(up.headers)
    if not up.api_key or up.auth == "none":
        return headers
    if up.auth == "bearer":
        headers["authorization"] = f"Bearer {up.api_key}"
    else:
        headers[up.auth] = up.api_key
    return headers


def join_url(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


class OpenAICompatAdapter:
    def chat_request(self, up: Upstream, model: str, body: dict[str, Any], stream: bool) -> RequestSpec:
        payload = {k: v for k, v in body.items() if k not in _GATEWAY_FIELDS}
        payload["model"] = model
        quirks = up.quirks
        if stream:
            payload["stream"] = True
            if not quirks.get("no_stream_options"):
                # Always ask for usage, whatever the client asked: we bill and log from it.
                options = dict(payload.get("stream_options") or {})
                options["include_usage"] = True
                payload["stream_options"] = options
            else:
                payload.pop("stream_options", None)
        else:
            payload.pop("stream", None)
            payload.pop("stream_options", None)
        if quirks.get("max_tokens_field") == "max_tokens" and "max_completion_tokens" in payload:
            payload.setdefault("max_tokens", payload.pop("max_completion_tokens"))
        translate_reasoning(payload, quirks)
        for name in quirks.get("drop_fields", ()):
            payload.pop(name, None)
        if quirks.get("flatten_content"):
            payload["messages"] = [_flatten(m) for m in payload.get("messages", [])]
        headers = auth_headers(up)
        headers["content-type"] = "application/json"
        if stream:
            headers["accept"] = "text/event-stream"
        return RequestSpec(
            "POST", self.url(up, "chat/completions", model), headers=headers,
            content=msgspec.json.encode(payload),
        )

    def url(self, up: Upstream, path: str, model: str) -> str:
        return join_url(up.base_url, path)

    def chat_response(self, data: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(data.get("choices"), list):
            if data.get("error"):
                raise _inband_error(data["error"])
            raise malformed("upstream returned a body without choices")
        for choice in data["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                canonical_reasoning(choice["message"])
        return data

    def stream_translator(self, request: dict[str, Any] | None = None) -> "OpenAIStreamTranslator":
        return OpenAIStreamTranslator()

    # -- embeddings and transcriptions: OpenAI paths under the same base URL ------------------------------

    def embeddings_url(self, up: Upstream, model: str) -> str:
        return self.url(up, "embeddings", model)

    def transcription_url(self, up: Upstream, model: str) -> str:
        return self.url(up, "audio/transcriptions", model)

    def completions_request(self, up: Upstream, model: str, body: dict[str, Any], stream: bool) -> RequestSpec:
        """A legacy ``/completions`` body, forwarded; a stream always asks for usage (it is billed from it).

        Where the provider's /completions is Mistral's fill-in-the-middle endpoint (``completions_path``),
        the body is mapped onto the fields it takes, and one it has no equivalent for is refused (400
        naming it), never dropped."""
        payload = {k: v for k, v in body.items() if k not in _GATEWAY_FIELDS}
        payload["model"] = model
        if up.quirks.get("completions_shape") == "chat":
            payload = _fim_payload(payload)
        payload.pop("stream_options", None)
        if stream:
            payload["stream"] = True
            if not up.quirks.get("no_stream_options"):
                payload["stream_options"] = {"include_usage": True}
        else:
            payload.pop("stream", None)
        headers = auth_headers(up)
        headers["content-type"] = "application/json"
        return RequestSpec("POST", self.url(up, up.quirks.get("completions_path", "completions"), model),
                           headers=headers, content=msgspec.json.encode(payload))

    def completion_answer(self, up: Upstream, data: dict[str, Any]) -> dict[str, Any]:
        """A ``text_completion`` body or chunk from the upstream's (a chat-shaped FIM answer's choices
        become ``text`` choices)."""
        if up.quirks.get("completions_shape") != "chat" or not isinstance(data.get("choices"), list):
            return data
        choices = []
        for index, choice in enumerate(data["choices"]):
            part = choice.get("message") or choice.get("delta") or {} if isinstance(choice, dict) else {}
            choices.append({"text": part.get("content") or "", "index": choice.get("index", index),
                            "logprobs": None, "finish_reason": choice.get("finish_reason")})
        return {**data, "choices": choices}

    def images_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        """An ``/images/generations`` body, forwarded (the web tier checked it against the model's data)."""
        return self._forwarded(up, "images/generations", model, body)

    def image_edit_request(self, up: Upstream, model: str, fields: dict[str, Any], files: list[Any]) -> RequestSpec:
        """``/images/edits`` as multipart, like the client's: its fields, then its images and mask (several
        images go as ``image[]``, as OpenAI's SDK sends them)."""
        form = {k: v for k, v in fields.items() if k != "model"}
        form["model"] = model
        many = sum(name == "image" for name, _ in files) > 1
        parts = [("image[]" if many and name == "image" else name, part) for name, part in files]
        return RequestSpec("POST", self.url(up, "images/edits", model), headers=auth_headers(up), files=parts,
                           data=form)

    def speech_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        """An ``/audio/speech`` body, forwarded; the answer is the audio itself."""
        return self._forwarded(up, "audio/speech", model, body)

    def moderations_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        return self._forwarded(up, "moderations", model, body)

    def _forwarded(self, up: Upstream, path: str, model: str, body: dict[str, Any]) -> RequestSpec:
        """The client's JSON body as OpenAI takes it at ``path``, with the upstream's model id and without the
        gateway's own fields."""
        payload = {k: v for k, v in body.items() if k not in _GATEWAY_FIELDS}
        payload["model"] = model
        headers = auth_headers(up)
        headers["content-type"] = "application/json"
        return RequestSpec("POST", self.url(up, path, model), headers=headers, content=msgspec.json.encode(payload))

    def rerank_request(self, up: Upstream, model: str, body: dict[str, Any], texts: list[str]) -> RequestSpec:
        """Cohere's rerank shape, which Jina, Voyage and Together share: the texts only (the worker adds the
        documents to the answer itself). Quirks: ``rerank_path`` (from the base URL's host: Cohere's v2 API
        outside its compatibility base), ``rerank_top_field`` (Voyage's ``top_k``)."""
        payload: dict[str, Any] = {"model": model, "query": body.get("query"), "documents": texts}
        if body.get("top_n") is not None:
            payload[up.quirks.get("rerank_top_field", "top_n")] = body["top_n"]
        path = up.quirks.get("rerank_path")
        if path:
            scheme, _, rest = up.base_url.partition("://")
            url = f"{scheme}://{rest.split('/', 1)[0]}{path}"
        else:
            url = self.url(up, "rerank", model)
        headers = auth_headers(up)
        headers["content-type"] = "application/json"
        return RequestSpec("POST", url, headers=headers, content=msgspec.json.encode(payload))

    def embeddings_request(self, up: Upstream, model: str, body: dict[str, Any]) -> RequestSpec:
        """The client's body, forwarded; base64 is asked for only where the upstream is known to honour it.

        Many OpenAI-compatible servers ignore or reject ``encoding_format: base64`` (or answer 200 with empty
        data), so they are asked for floats and the worker encodes for the client itself.
        """
        payload = {k: v for k, v in body.items() if k not in _GATEWAY_FIELDS}
        payload["model"] = model
        native = up.quirks.get("embeddings_base64", up.provider in _BASE64_EMBEDDINGS)
        payload["encoding_format"] = "base64" if native and body.get("encoding_format") == "base64" else "float"
        headers = auth_headers(up)
        headers["content-type"] = "application/json"
        return RequestSpec("POST", self.embeddings_url(up, model), headers=headers,
                           content=msgspec.json.encode(payload))

    def embeddings_response(self, data: Any) -> tuple[list[Any], dict[str, Any] | None]:
        """(one embedding per input in input order: a float list or a base64 string, the upstream's usage)."""
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            if isinstance(data, dict) and data.get("error"):
                raise _inband_error(data["error"])
            raise malformed("upstream returned a body without embedding data")
        ordered = sorted((i for i in items if isinstance(i, dict)), key=lambda i: i.get("index") or 0)
        vectors = [item.get("embedding") for item in ordered]
        if any(not isinstance(v, (list, str)) for v in vectors):
            raise malformed("upstream returned an embedding without values")
        usage = data.get("usage")
        return vectors, usage if isinstance(usage, dict) else None

    def transcription_request(self, up: Upstream, model: str, fields: dict[str, Any], filename: str,
                              audio: bytes, content_type: str) -> RequestSpec:
        """Multipart like the client's: its fields (``[]`` arrays repeated), the file under its own name.

        The filename keeps its extension, which some providers (Groq) use to tell the audio format.
        The shared client writes a fresh boundary and the matching content-type header.
        """
        form = {k: v for k, v in fields.items() if k not in ("model", "stream")}
        form["model"] = model
        return RequestSpec("POST", self.transcription_url(up, model), headers=auth_headers(up),
                           files=[("file", (filename, audio, content_type))], data=form)

    def error(self, status: int, headers: dict[str, str], body: bytes) -> UpstreamError:
        message, code = error_message_from_json(body, f"upstream returned HTTP {status}")
        retryable, fallback, error_type = classify_status(status)
        if code and "context_length" in code:
            retryable, fallback, error_type = False, False, "invalid_request"
        return UpstreamError(
            status, message, retryable=retryable, fallback=fallback, error_type=error_type,
            retry_after=retry_after_seconds(headers), code=code,
        )


class OpenAIStreamTranslator:
    """OpenAI chunks pass through; the translator only notices the end and in-band errors."""

    def __init__(self) -> None:
        self.finished = False  # a finish_reason was seen
        self.done = False  # [DONE] was seen

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if data == "[DONE]":
            self.done = True
            return []
        if not data:
            return []
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise malformed("upstream sent a malformed stream chunk") from None
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            raise _inband_error(chunk["error"])
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finished = True
            if isinstance(choice.get("delta"), dict):
                canonical_reasoning(choice["delta"])
        return [chunk]

    def close(self) -> list[dict[str, Any]]:
        if not (self.finished or self.done):
            raise malformed("upstream stream ended before it finished")
        return []


def _inband_error(err: Any) -> UpstreamError:
    """An error object sent with HTTP 200 (vLLM, SGLang and gateways put them inside streams)."""
    if isinstance(err, dict):
        message = str(err.get("message") or "upstream error")
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
    else:
        message, status = str(err), 502
    retryable, fallback, error_type = classify_status(status)
    return UpstreamError(status, message, retryable=retryable, fallback=fallback, error_type=error_type)


# /completions fields and what Mistral's fill-in-the-middle endpoint calls them (None: it has no such field)
_FIM_FIELDS = {"model": "model", "prompt": "prompt", "suffix": "suffix", "max_tokens": "max_tokens",
               "temperature": "temperature", "top_p": "top_p", "stream": "stream", "stop": "stop",
               "seed": "random_seed", "stream_options": None, "user": None}


def _fim_payload(payload: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in payload.items():
        if name == "n" and value == 1 or name == "best_of" and value == 1 or name == "echo" and not value:
            continue
        if name not in _FIM_FIELDS:
            raise UpstreamError(400, f"Mistral's fill-in-the-middle endpoint has no '{name}'.", retryable=False,
                                fallback=True, error_type="invalid_request", param=name)
        if _FIM_FIELDS[name] is not None:
            out[_FIM_FIELDS[name]] = value
    if not isinstance(out.get("prompt"), str):
        raise UpstreamError(400, "Mistral's fill-in-the-middle endpoint takes one 'prompt' string.",
                            retryable=False, fallback=True, error_type="invalid_request", param="prompt")
    return out


def _flatten(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        message = dict(message)
        message["content"] = "".join(p.get("text", "") for p in content)
    return message
