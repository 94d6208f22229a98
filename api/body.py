"""Reading and validating JSON request bodies, with errors that name the offending field."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request

from common.errors import GatewayError, invalid

T = TypeVar("T")

_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise invalid("The request body was not received completely.") from None
    return b"".join(chunks)


def too_large(limit: int) -> GatewayError:
    return GatewayError("payload_too_large", f"The request body is larger than the {limit} bytes allowed.")


async def read_json(request: Request, schema: type[T], limit: int) -> tuple[bytes, T]:
    """(raw body, validated object). The raw body is what travels on: unknown fields pass through."""
    body = await read_body(request, limit)
    if not body.strip():
        raise invalid("The request body is empty; send a JSON object.")
    return body, decode_json(body, schema)


def decode_json(body: bytes, schema: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        param = match.group(1) if match else None
        text = _PATH.sub("", message)
        missing = _MISSING.match(text)
        if missing:  # a missing field is reported at its parent's path; name the field itself
            param = f"{param}.{missing.group(1)}" if param else missing.group(1)
            text = "this field is required"
        if param:
            text = f"Invalid value for '{param}': {text}"
        raise invalid(text, param=param or None) from None
    except msgspec.DecodeError as exc:
        raise invalid(f"The request body is not valid JSON ({exc}).") from None
