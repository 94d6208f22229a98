"""``POST /audio/transcriptions``: a multipart upload, handed to a worker through a short-lived Redis key.

Nothing of a refused upload is read: the caller is identified before the body (an unknown key, a caller
past its limit: refused at once), and the model is planned and admitted when the file part begins, from
the fields before it (OpenAI's SDKs send ``model`` first), so an unknown model, a paid model without a
key or a limit used up is refused before the audio streams in. (A ``model`` field after the file is
checked once the upload is read.) The upload is bounded while it streams in (the declared length first,
then a running count), so an oversized file is refused with 413 without being read whole or forwarded. The audio travels to the worker
once, as raw bytes under ``Names.blob(request_id)`` with a short TTL (the job carries only the key, no
base64 inflation); the worker takes it with GETDEL, and this route deletes the key when the request ends
in any way, so no copy is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.exchange.dispatch import Dispatch
from api.routes.embeddings import endpoint_plan
from api.exchange.body import budget_of, busy
from api.gateway import Gateway
from common.errors import GatewayError, invalid, unavailable
from common.wire import Route

BLOB_TTL_S = 120  # must match workers/transcriptions.py
FORM_OVERHEAD = 1024 * 1024  # room for the text fields and multipart framing around the file
MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 32
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

    async def admit(fields: dict[str, Any]) -> None:
        """Plan and admit the request from its text fields (before the audio when ``model`` comes first)."""
        nonlocal plan
        dispatch.exchange.model = fields["model"]
        plan = endpoint_plan(gateway, fields["model"], modality="transcription", capability="transcription")
        await dispatch.admit(plan)

    try:
        await dispatch.identify()  # who calls, before a byte of the upload is read
        upload = await read_upload(request, gateway.settings.limits.max_upload_bytes, before_file=admit)
        if not plan:  # the model came after the file
            await admit(upload.fields)
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


# -- reading the upload --------------------------------------------------------------------------------------


class _Parser(MultiPartParser):
    """Starlette's parser, noting the text fields received when the file part begins."""

    fields_before_file: list[tuple[str, Any]] | None = None

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None and self.fields_before_file is None:
            self.fields_before_file = list(self.items)


async def read_upload(request: Request, limit: int,
                      before_file: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Upload:
    """Parse the multipart body, refusing a file over ``limit`` bytes while it streams in.

    ``before_file`` gets the text fields that came before the file part as soon as it begins, if they
    include ``model`` (at most one more chunk of the body is read by then); raising there stops the upload."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise invalid("Send the audio as multipart/form-data with 'file' and 'model' fields.", param="file")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit)
    parser: _Parser

    async def watched(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        checked = before_file is None
        async for chunk in stream:
            if not checked and parser.fields_before_file is not None:
                checked = True
                fields = text_fields(parser.fields_before_file, require_model=False)
                if fields.get("model"):
                    assert before_file is not None
                    await before_file(fields)
            yield chunk

    parser = _Parser(request.headers, watched(_bounded(request, limit + FORM_OVERHEAD)),
                     max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise invalid(f"The multipart body could not be read: {exc.message}", param="file") from None
    except ClientDisconnect:
        raise invalid("The request body was not received completely.") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise invalid("Missing required parameter: 'file'.", param="file")
        if file.size is not None and file.size > limit:
            raise too_large(limit)
        fields = text_fields(form.multi_items())
        audio = await file.read()
        if len(audio) > limit:
            raise too_large(limit)
        return Upload(fields, file.filename or "audio", file.content_type or "application/octet-stream", audio)
    finally:
        await form.close()


async def _bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, at most ``limit`` bytes, each taken from the process's budget of bodies in flight
    (api/exchange/body.py): an upload it cannot hold is refused with 503 as it streams in."""
    budget = budget_of(request)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if budget is not None and not budget.take(request.scope, len(chunk)):
            raise busy()
        yield chunk


def too_large(limit: int) -> GatewayError:
    return GatewayError("payload_too_large",
                        f"The audio file is larger than the {limit // (1024 * 1024)} MB allowed.", param="file")


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
