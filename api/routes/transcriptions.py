"""``POST /audio/transcriptions``: a multipart upload, handed to a worker through a short-lived Redis key.

Nothing of a refused upload is read: the caller is identified before the body (an unknown key, a caller
past its limit: refused at once), and the model is planned and admitted when the file part begins, from
the fields before it (OpenAI's SDKs send ``model`` first), so an unknown model, a paid model without a
key or a limit used up is refused before the audio streams in. (A ``model`` field after the file is
checked once the upload is read.) A paid model's hold is the worst case of the largest audio the upload can
carry (its declared length, else the upload limit; the file's own size when ``model`` comes after it) at the
lowest bitrate speech is encoded at (``api/access/worst_case.py``). The upload is bounded while it streams in (the declared length first,
then a running count), so an oversized file is refused with 413 without being read whole or forwarded. The audio travels to the worker
once, as raw bytes under ``Names.blob(request_id)`` with a short TTL (the job carries only the key, no
base64 inflation); the worker takes it with GETDEL, and this route deletes the key when the request ends
in any way, so no copy is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from api.access.worst_case import worst_case_transcription_cost
from api.exchange.dispatch import Dispatch
from api.routes.embeddings import endpoint_plan
from api.routes.uploads import read_form
from api.gateway import Gateway
from common.errors import GatewayError, invalid, unavailable
from common.wire import Route

BLOB_TTL_S = 120  # must match workers/transcriptions.py
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")


@dataclass
class Upload:
    fields: dict[str, Any]  # text fields; "name[]" fields are lists
    filename: str
    content_type: str
    audio: bytes


async def create_transcription(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "transcriptions")
    plan: list[Route] = []

    limit = gateway.settings.limits.max_upload_bytes

    async def admit(fields: dict[str, Any], audio_bytes: int | None = None) -> None:
        """Plan and admit the request from its text fields (before the audio when ``model`` comes first),
        holding what the largest audio the upload can carry could cost (``audio_bound``)."""
        nonlocal plan
        dispatch.exchange.model = fields["model"]
        plan = endpoint_plan(gateway, fields["model"], modality="transcription", capability="transcription")
        size = audio_bound(request, limit) if audio_bytes is None else audio_bytes
        await dispatch.admit(plan, cost_bound=lambda: worst_case_transcription_cost(
            gateway.catalog, plan, size, gateway.settings.default_max_tokens))

    try:
        await dispatch.identify()  # who calls, before a byte of the upload is read
        upload = await read_upload(request, limit, before_file=admit)
        if not plan:  # the model came after the file: its size is known
            await admit(upload.fields, len(upload.audio))
    except GatewayError as error:
        return await dispatch.refuse(error)
    blob_key = gateway.names.blob(dispatch.request_id)
    try:
        try:
            await gateway.redis.set(blob_key, upload.audio, ex=BLOB_TTL_S)
        except Exception:
            return await dispatch.refuse(unavailable("The gateway cannot reach its queue (Redis) right now."))
        meta = {"fields": upload.fields, "filename": upload.filename, "content_type": upload.content_type}
        del upload  # the bytes now live in Redis only, until a worker takes them
        return await dispatch.answer(dispatch.job("transcription", plan, blob_key=blob_key, meta=meta))
    finally:
        await asyncio.shield(_forget(gateway, blob_key))


async def _forget(gateway: Gateway, key: str) -> None:
    with contextlib.suppress(Exception):  # Redis trouble: the key's TTL removes it soon anyway
        await gateway.redis.delete(key)


def audio_bound(request: Request, limit: int) -> int:
    """The most audio bytes this upload can carry, before it is read: its declared length (which frames the
    file), else the upload limit (a body without ``Content-Length`` is held at the largest file)."""
    declared = request.headers.get("content-length", "")
    return min(int(declared), limit) if declared.isdigit() else limit


# -- reading the upload --------------------------------------------------------------------------------------


async def read_upload(request: Request, limit: int,
                      before_file: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Upload:
    """The multipart body (``api/routes/uploads.py``): one audio ``file`` of at most ``limit`` bytes.

    ``before_file`` gets the text fields that came before the file part as soon as it begins, if they
    include ``model``; raising there stops the upload."""

    async def early(items: list[tuple[str, Any]]) -> None:
        fields = text_fields(items, require_model=False)
        if fields.get("model") and before_file is not None:
            await before_file(fields)

    form = await read_form(request, limit, file_fields=("file",), max_files=1, what="audio file",
                           hint="Send the audio as multipart/form-data with 'file' and 'model' fields.",
                           before_file=early if before_file is not None else None)
    if not form.files:
        raise invalid("Missing required parameter: 'file'.", param="file")
    fields = text_fields(form.items)
    audio = form.files[0]
    return Upload(fields, audio.filename or "audio", audio.content_type, audio.data)


def text_fields(items: list[tuple[str, Any]], require_model: bool = True) -> dict[str, Any]:
    """The form's text fields, validated; ``name[]`` fields (e.g. ``timestamp_granularities[]``) are lists."""
    fields: dict[str, Any] = {}
    for name, value in items:
        if name == "file":
            continue
        if isinstance(value, UploadFile):
            raise invalid(f"Unexpected file in field {name!r}; send the audio as 'file'.", param=name)
        if name.endswith("[]"):
            fields.setdefault(name, []).append(value)
        else:
            fields[name] = value
    if require_model and not fields.get("model"):
        raise invalid("Missing required parameter: 'model'.", param="model")
    fmt = fields.get("response_format")
    if fmt is not None and fmt not in RESPONSE_FORMATS:
        raise invalid(f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}.", param="response_format")
    if "temperature" in fields:
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            temperature = -1.0
        if not 0 <= temperature <= 1:
            raise invalid("'temperature' must be a number between 0 and 1.", param="temperature")
    for granularity in fields.get("timestamp_granularities[]", ()):
        if granularity not in GRANULARITIES:
            raise invalid("'timestamp_granularities[]' items must be 'word' or 'segment'.",
                          param="timestamp_granularities[]")
    return fields


ROUTES = [("POST", "/audio/transcriptions", create_transcription)]
