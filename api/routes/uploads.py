"""Reading a multipart upload (audio to transcribe, images to edit): shared by the upload routes.

Nothing of a refused upload is read: the body is bounded while it streams in (the declared length
first, then a running count), so an oversized file is refused with 413 without being read whole or
forwarded, and ``before_file`` gets the text fields sent before the first file part as soon as it
begins (OpenAI's SDKs send them first), so a route can plan and admit the request, or refuse it, before
the file streams in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from api.exchange.body import budget_of, busy
from common.errors import GatewayError, invalid

FORM_OVERHEAD = 1024 * 1024  # room for the text fields and multipart framing around the files
MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 32


@dataclass
class FilePart:
    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    items: list[tuple[str, Any]]  # the text fields, in order (files left out)
    files: list[FilePart]


class _Parser(MultiPartParser):
    """Starlette's parser, noting the text fields received when the first file part begins."""

    fields_before_file: list[tuple[str, Any]] | None = None

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None and self.fields_before_file is None:
            self.fields_before_file = list(self.items)


async def read_form(request: Request, limit: int, *, file_fields: tuple[str, ...], max_files: int, what: str,
                    hint: str, before_file: Callable[[list[tuple[str, Any]]], Awaitable[None]] | None = None,
                    ) -> Form:
    """Parse the multipart body: files only in ``file_fields``, at most ``max_files``, ``limit`` bytes in all
    (413 naming the first file field past it). ``hint`` says how to send the form, for a body that is not
    one; ``before_file`` gets the text fields that came before the first file (raising there stops it)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise invalid(hint, param=file_fields[0])
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit, what, file_fields[0])
    parser: _Parser

    async def watched(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        checked = before_file is None
        async for chunk in stream:
            if not checked and parser.fields_before_file is not None:
                checked = True
                assert before_file is not None
                await before_file(parser.fields_before_file)
            yield chunk

    parser = _Parser(request.headers, watched(_bounded(request, limit + FORM_OVERHEAD, what, file_fields[0])),
                     max_files=max_files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise invalid(f"The multipart body could not be read: {exc.message}", param=file_fields[0]) from None
    except ClientDisconnect:
        raise invalid("The request body was not received completely.") from None
    try:
        items: list[tuple[str, Any]] = []
        files: list[FilePart] = []
        total = 0
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):
                items.append((name, value))
                continue
            if name not in file_fields:
                raise invalid(f"Unexpected file in field {name!r}; send {what} as {file_fields[0]!r}.", param=name)
            data = await value.read()
            total += len(data)
            if total > limit:
                raise too_large(limit, what, name)
            files.append(FilePart(name, value.filename or name, value.content_type or "application/octet-stream",
                                  data))
        return Form(items, files)
    finally:
        await form.close()


async def _bounded(request: Request, limit: int, what: str, field: str) -> AsyncIterator[bytes]:
    """The body's chunks, at most ``limit`` bytes, each taken from the process's budget of bodies in flight
    (api/exchange/body.py): an upload it cannot hold is refused with 503 as it streams in."""
    budget = budget_of(request)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit - FORM_OVERHEAD, what, field)
        if budget is not None and not budget.take(request.scope, len(chunk)):
            raise busy()
        yield chunk


def too_large(limit: int, what: str, field: str) -> GatewayError:
    return GatewayError("payload_too_large", f"The {what} is larger than the {limit // (1024 * 1024)} MB allowed.",
                        param=field)
