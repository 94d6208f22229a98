"""Operational endpoints: liveness (``/health``), readiness (``/ready``) and metrics (``/metrics``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


async def health(request: Request) -> Response:
    """The process is alive (no dependency is checked: that is ``/ready``)."""
    return JSONResponse({"status": "ok"})


ROUTES = [
    ("GET", "/health", health),
]
