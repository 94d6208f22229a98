"""Admission: who may make this request (API keys, anonymous free use, per-IP and per-key limits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:
    from api.gateway import Gateway


@dataclass
class Admission:
    key_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the response


async def admit(gateway: "Gateway", request: Request, *, model_is_free: bool) -> Admission:
    """Let the request in, or raise ``GatewayError`` (401/402/429/400 in the documented envelope)."""
    return Admission()
