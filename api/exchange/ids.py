"""Request ids: every request gets a fresh internal id; a client's ``x-request-id`` is echoed back."""

from __future__ import annotations

import re

from starlette.requests import Request

_SANE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")


def client_request_id(request: Request) -> str | None:
    """The client's own id, if it is a plain token (it goes into logs and headers, never into keys)."""
    given = request.headers.get("x-request-id")
    return given if given and _SANE.match(given) else None
