"""OpenAI's endpoints beyond chat, embeddings and transcriptions, as strict as OpenAI's own:
legacy ``/completions``, ``/images/generations`` and ``/edits``, ``/audio/speech``, ``/moderations`` (and Mistral's
``/fim/completions``), served by the fake OpenAI app (``tests/fakes/openai_server.py``).

Each refuses what OpenAI refuses (a chat model on ``/completions``, ``suffix`` on a model without
fill-in-the-middle, ``echo`` with ``suffix``, ``best_of`` while streaming) with OpenAI's 400 or 404.
Answers are deterministic, so a test can compare what the client got with what was sent.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from tests.fakes.openai_server import (
    BadRequest, Endpoint, Receive, Scope, Send, abort_connection, base_headers, send_error, send_json, token_text,
    _encode,
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


# --------------------------------------------------------------------------- images


IMAGE_RULES: dict[str, dict[str, Any]] = {  # OpenAI's documented limits per model
    "dall-e-2": {"sizes": ("256x256", "512x512", "1024x1024"), "qualities": ("standard",), "max_n": 10,
                 "formats": ("url", "b64_json"), "styles": ()},
    "dall-e-3": {"sizes": ("1024x1024", "1792x1024", "1024x1792"), "qualities": ("standard", "hd"), "max_n": 1,
                 "formats": ("url", "b64_json"), "styles": ("vivid", "natural")},
    "grok-2-image-1212": {"sizes": (), "qualities": (), "max_n": 10, "formats": ("url", "b64_json"), "styles": ()},
    "gpt-image-1": {"sizes": ("1024x1024", "1536x1024", "1024x1536", "auto"),
                    "qualities": ("low", "medium", "high", "auto"), "max_n": 10, "formats": (), "styles": ()},
}
# gpt-image-1's image output tokens by quality and size (OpenAI's image pricing table)
GPT_IMAGE_TOKENS = {("low", "1024x1024"): 272, ("low", "1536x1024"): 408, ("medium", "1024x1024"): 1056,
                    ("medium", "1536x1024"): 1584, ("high", "1024x1024"): 4160, ("high", "1536x1024"): 6240}


def image_bytes(prompt: str, index: int, size: int) -> bytes:
    """A deterministic stand-in for an image of ``size`` bytes (PNG magic, then a repeated digest)."""
    seed = hashlib.sha256(f"{prompt}|{index}".encode()).digest()
    return (b"\x89PNG\r\n\x1a\n" + seed * (size // 32 + 1))[:size]


class ImagesEndpoint(Endpoint):
    """``POST /v1/images/generations``; ``state.image_size`` sets how many bytes each image has."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise BadRequest("Missing required parameter: 'prompt'.", "prompt")
        model = body.get("model", "dall-e-2")
        rules = IMAGE_RULES.get(model)
        if rules is None:
            await send_error(send, self.state, serial, 404, f"The model '{model}' does not exist.", "model")
            return
        n = body.get("n", 1)
        if not isinstance(n, int) or n < 1:
            raise BadRequest(f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} "
                             "instead.", "n", "integer_below_min_value")
        if n > rules["max_n"]:
            raise BadRequest(f"Invalid 'n': integer above maximum value. Expected a value <= {rules['max_n']}, "
                             f"but got {n} instead.", "n", "integer_above_max_value")
        size, quality = body.get("size"), body.get("quality")
        if size is not None and size not in rules["sizes"]:
            raise BadRequest(f"Invalid value: '{size}'. Supported values are: {rules['sizes']}.", "size")
        if quality is not None and quality not in rules["qualities"]:
            raise BadRequest(f"Invalid value: '{quality}'. Supported values are: {rules['qualities']}.", "quality")
        fmt = body.get("response_format")
        if fmt is not None and not rules["formats"]:
            raise BadRequest("Unknown parameter: 'response_format'.", "response_format", "unknown_parameter")
        if fmt is not None and fmt not in rules["formats"]:
            raise BadRequest(f"Invalid value: '{fmt}'.", "response_format")
        if body.get("style") is not None and body["style"] not in rules["styles"]:
            raise BadRequest("Unknown parameter: 'style'." if not rules["styles"] else "Invalid value for 'style'.",
                             "style")
        created = int(time.time())
        data = []
        for i in range(n):
            raw = image_bytes(body["prompt"], i, self.state.image_size)
            if fmt == "url":
                data.append({"url": f"https://fake-images.openai.test/{serial}/{i}.png"})
            else:
                data.append({"b64_json": base64.b64encode(raw).decode()})
            if model == "dall-e-3":
                data[-1]["revised_prompt"] = "A revised " + body["prompt"]
        answer: dict[str, Any] = {"created": created, "data": data}
        if model.startswith("gpt-image"):
            q = quality if quality in ("low", "medium", "high") else "high"
            s = "1536x1024" if size in ("1536x1024", "1024x1536") else "1024x1024"
            text_tokens = max(1, len(body["prompt"]) // 4)
            output = GPT_IMAGE_TOKENS[(q, s)] * n
            answer["usage"] = {"total_tokens": text_tokens + output, "input_tokens": text_tokens,
                               "output_tokens": output,
                               "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0}}
        await send_json(send, serial, answer)


# --------------------------------------------------------------------------- speech

SPEECH_VOICES = ("alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer")
SPEECH_MODELS = {"tts-1": SPEECH_VOICES, "tts-1-hd": SPEECH_VOICES,
                 "gpt-4o-mini-tts": (*SPEECH_VOICES, "ballad", "verse", "marin", "cedar")}
SPEECH_TYPES = {"mp3": b"audio/mpeg", "opus": b"audio/opus", "aac": b"audio/aac", "flac": b"audio/flac",
                "wav": b"audio/wav", "pcm": b"audio/pcm"}


def speech_bytes(text: str, voice: str, fmt: str, size: int) -> bytes:
    """The fake's audio: ``size`` deterministic bytes for this text, voice and format."""
    seed = hashlib.sha256(f"{text}|{voice}|{fmt}".encode()).digest()
    return (seed * (size // 32 + 1))[:size]


class SpeechEndpoint(Endpoint):
    """``POST /v1/audio/speech``: the audio streamed in 4 KiB chunks; ``state.speech_size`` bytes of it
    (failure ``"cut"``: the connection drops after the first chunk)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BadRequest("you must provide a model parameter", "model")
        voices = SPEECH_MODELS.get(body["model"])
        if voices is None:
            await send_error(send, self.state, serial, 404, f"The model '{body['model']}' does not exist.", "model")
            return
        text = body.get("input")
        if not isinstance(text, str) or not text:
            raise BadRequest("Missing required parameter: 'input'.", "input")
        if len(text) > 4096:
            raise BadRequest("Invalid 'input': string too long. Expected a string with maximum length 4096.",
                             "input", "string_above_max_length")
        voice = body.get("voice")
        if voice not in voices:
            raise BadRequest(f"Invalid value for 'voice': {voice!r}. Supported values are: {voices}.", "voice")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_TYPES:
            raise BadRequest(f"Invalid value for 'response_format': {fmt!r}.", "response_format")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise BadRequest("Invalid 'speed': expected a value between 0.25 and 4.0.", "speed")
        if "instructions" in body and body["model"] != "gpt-4o-mini-tts":
            raise BadRequest("Instructions are not supported for this model.", "instructions")
        audio = speech_bytes(text, voice, fmt, self.state.speech_size)
        await send({"type": "http.response.start", "status": 200,
                    "headers": base_headers(serial, SPEECH_TYPES[fmt])})
        for i in range(0, len(audio), 4096):
            await send({"type": "http.response.body", "body": audio[i:i + 4096], "more_body": True})
            if failure == "cut":  # the upstream dies after its first bytes
                await abort_connection(receive, send, started=True)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --------------------------------------------------------------------------- moderations

MODERATION_MODELS = {"omni-moderation-latest": True, "omni-moderation-2024-09-26": True,
                     "text-moderation-latest": False}  # model -> takes images
MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                         "sexual/minors", "violence", "violence/graphic")


def moderation_result(text: str, image: bool) -> dict[str, Any]:
    """Flagged for violence when the text says "kill" (a deterministic stand-in for the classifier)."""
    violent = "kill" in text.lower()
    scores = {c: (0.91 if violent and c == "violence" else 0.0001) for c in MODERATION_CATEGORIES}
    applied = {c: (["text", "image"] if image else ["text"]) if c.startswith(("violence", "self-harm", "sexual"))
               else ["text"] for c in MODERATION_CATEGORIES}
    return {"flagged": violent, "categories": {c: scores[c] > 0.5 for c in MODERATION_CATEGORIES},
            "category_scores": scores, "category_applied_input_types": applied}


class ModerationsEndpoint(Endpoint):
    """``POST /v1/moderations``: one result per string, or one for a list of parts."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict) or "input" not in body:
            raise BadRequest("Missing required parameter: 'input'.", "input")
        model = body.get("model", "omni-moderation-latest")
        if model not in MODERATION_MODELS:
            await send_error(send, self.state, serial, 404, f"The model '{model}' does not exist.", "model")
            return
        value = body["input"]
        if isinstance(value, str):
            results = [moderation_result(value, False)]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            results = [moderation_result(v, False) for v in value]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if any(v.get("type") == "image_url" for v in value) and not MODERATION_MODELS[model]:
                raise BadRequest(f"{model} does not support image inputs.", "input")
            text = " ".join(v.get("text", "") for v in value if v.get("type") == "text")
            results = [moderation_result(text, any(v.get("type") == "image_url" for v in value))]
        else:
            raise BadRequest("Invalid type for 'input'.", "input")
        await send_json(send, serial, {"id": f"modr-fake{serial}", "model": model + "-fake", "results": results})


# --------------------------------------------------------------------------- Mistral's fill-in-the-middle

FIM_FIELDS = {"model", "prompt", "suffix", "max_tokens", "min_tokens", "temperature", "top_p", "stream", "stop",
              "random_seed"}


class FimEndpoint(Endpoint):
    """Mistral's ``POST /v1/fim/completions`` (Codestral): chat-shaped answers; an unknown field is Mistral's
    422 (``extra_forbidden``), a model other than Codestral its 400."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("Invalid JSON body.")
        extra = sorted(set(body) - FIM_FIELDS)
        if extra:
            detail = [{"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted"}
                      for name in extra]
            await send_json(send, serial, {"object": "error", "message": {"detail": detail}, "type":
                                           "invalid_request_error", "param": None, "code": None}, 422)
            return
        if not str(body.get("model", "")).startswith("codestral"):
            raise BadRequest("Invalid model: fill-in-the-middle is only available for Codestral models.", "model")
        prompt, suffix = body.get("prompt"), body.get("suffix")
        if not isinstance(prompt, str):
            raise BadRequest("Input should be a valid string", "prompt")
        count = min(self.state.tokens, body.get("max_tokens", 16))
        text = fill_text(prompt, suffix if suffix is not None else "", count)
        usage = {"prompt_tokens": max(1, (len(prompt) + len(suffix or "")) // 4), "completion_tokens": count,
                 "total_tokens": max(1, (len(prompt) + len(suffix or "")) // 4) + count}
        head = {"id": f"fim-{serial}", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            await send_json(send, serial, {**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]})
            return
        frames = [{**head, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": piece + " "}, "finish_reason": None}]}
                  for piece in text.split(" ")[:-1]]
        frames.append({**head, "object": "chat.completion.chunk", "usage": usage,
                       "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "length"}]})
        await send({"type": "http.response.start", "status": 200,
                    "headers": base_headers(serial, b"text/event-stream")})
        for chunk in frames:
            await send({"type": "http.response.body", "body": b"data: " + _encode(chunk) + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


# --------------------------------------------------------------------------- image edits

EDIT_RULES = {"dall-e-2": {"images": 1, "bytes": 4 * 1024 * 1024}, "gpt-image-1": {"images": 16, "bytes": 50 << 20}}


def edited_bytes(prompt: str, images: list[bytes], index: int, size: int) -> bytes:
    """The fake's edit: depends on the prompt and every input image's bytes, so a test sees they arrived."""
    digest = hashlib.sha256(b"".join(images)).hexdigest()[:16]
    return image_bytes(f"{prompt}|{digest}", index, size)


class ImageEditsEndpoint(Endpoint):
    """``POST /v1/images/edits`` (multipart): dall-e-2 one square PNG under 4 MB; gpt-image-1 up to 16
    ``image[]`` files."""

    async def read(self, scope: Scope, receive: Receive) -> Any:
        try:
            form = await Request(scope, receive).form(max_files=32)
        except Exception:
            return BadRequest("Could not parse multipart form.")
        fields: dict[str, Any] = {"_files": {}}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields["_files"].setdefault(key, []).append((value.filename, value.content_type, await value.read()))
            else:
                fields[key] = value
        return fields

    async def handle(self, scope: Scope, receive: Receive, send: Send, serial: int, body: Any, failure: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("Expected multipart/form-data.")
        model = body.get("model", "dall-e-2")
        rules = EDIT_RULES.get(model)
        if rules is None:
            raise BadRequest(f"Invalid model {model}. The model must be one of {sorted(EDIT_RULES)}.", "model")
        files = body["_files"]
        images = [data for _, _, data in files.get("image", []) + files.get("image[]", [])]
        if not images:
            raise BadRequest("Missing required parameter: 'image'.", "image")
        if "image[]" in files and model == "dall-e-2" or len(images) > rules["images"]:
            raise BadRequest(f"Too many images for {model}.", "image")
        if any(len(data) > rules["bytes"] for data in images):
            raise BadRequest("Invalid input image - image too large.", "image")
        if model == "dall-e-2" and not images[0].startswith(b"\x89PNG"):
            raise BadRequest("Invalid input image - format must be in ['png'].", "image")
        prompt = body.get("prompt")
        if not prompt:
            raise BadRequest("Missing required parameter: 'prompt'.", "prompt")
        n = int(body.get("n", 1))
        b64 = body.get("response_format", "b64_json" if model != "dall-e-2" else "url") == "b64_json"
        data = [{"b64_json": base64.b64encode(edited_bytes(prompt, images, i, self.state.image_size)).decode()}
                if b64 else {"url": f"https://fake-images.openai.test/edit/{serial}/{i}.png"} for i in range(n)]
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if model.startswith("gpt-image"):
            answer["usage"] = {"input_tokens": 100, "output_tokens": 272 * n, "total_tokens": 100 + 272 * n,
                               "input_tokens_details": {"text_tokens": 10, "image_tokens": 90}}
        await send_json(send, serial, answer)
