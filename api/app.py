"""The web tier's ASGI app: routes (bare, under ``/v1`` and ``/api/v1``, and the same again under an optional
mount prefix) and errors.

Handlers take the raw Starlette request and validate with msgspec themselves, so no pydantic model sits
on the hot path; every refusal, including unknown routes, is the documented error envelope.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import pages
from api.routes import (
    admin, chat, completions, embeddings, gemini, images, listings, lookups, messages, moderations, ops, rerank,
    responses, speech, streams, stripe_webhook, transcriptions,
)
from api.gateway import Gateway
from api.exchange.answer import error_response
from api.exchange.body import BODY_BYTES
from common.errors import GatewayError
from common.settings import Settings, load_settings
from common.telemetry import init_sentry, settle_heap, setup_logging
from common.tracing import init_tracing, shutdown_tracing

log = logging.getLogger("megabrain.api")

Endpoint = Callable[[Request], Awaitable[Response]]


# (method, path, handler) from each route module: each is served under every base of ``route_bases``
ROUTES: list[tuple[str, str, Endpoint]] = [
    *chat.ROUTES, *completions.ROUTES, *images.ROUTES, *speech.ROUTES, *embeddings.ROUTES, *transcriptions.ROUTES,
    *moderations.ROUTES, *rerank.ROUTES, *listings.ROUTES, *lookups.ROUTES, *admin.ROUTES, *ops.ROUTES,
    *messages.ROUTES, *responses.ROUTES, *gemini.ROUTES, *streams.ROUTES, *stripe_webhook.ROUTES,
]

# Bare, OpenAI's /v1 and OpenRouter's /api/v1: tools written for either find every route.
BASES = ("", "/v1", "/api/v1")


def route_bases(mount_prefix: str) -> list[str]:
    """Where routes are served: always the plain bases, and the same under the mount prefix when set
    (the prefix adds paths, it never takes the plain ones away)."""
    prefix = mount_prefix.rstrip("/")
    bases = list(BASES)
    if prefix:
        bases += [prefix + base for base in BASES]
    return bases


def create_app(settings: Settings | None = None, *, gateway: Gateway | None = None, settle: bool = True) -> Starlette:
    """A plain Starlette app: FastAPI's extra middleware layers cost CPU on every request and we use none of
    them (no dependencies, no schema). ``settle``: once started, the process's long-lived objects leave the
    garbage collector's view (``common.telemetry.settle_heap``; off for apps inside a test process)."""
    settings = settings or load_settings()
    setup_logging(settings.log_level)
    init_sentry(settings, "web")
    init_tracing(settings.env, "web")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw = gateway or Gateway(settings)
        app.state.gateway = gw
        await gw.start()
        if settle:
            settle_heap()
        try:
            yield
        finally:
            await gw.stop()
            shutdown_tracing()

    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            error = GatewayError("not_found", f"There is no route {request.url.path}.")
        elif exc.status_code == 405:
            error = GatewayError("method_not_allowed", f"{request.method} is not allowed on {request.url.path}.")
        else:
            error = GatewayError("invalid_request", str(exc.detail), status=exc.status_code)
        return error_response(error)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(GatewayError("internal_error", "The gateway hit an unexpected error."))

    bases = route_bases(settings.mount_prefix)
    routes = [Route(base + path, endpoint, methods=[method]) for method, path, endpoint in ROUTES for base in bases]
    # browser pages: bare or under the prefix, not /v1
    routes += [Route(settings.mount_prefix + path, endpoint, methods=[method]) for method, path, endpoint in pages.ROUTES]
    handlers: dict[Any, Callable[[Request, Any], Awaitable[Response]]] = {
        GatewayError: gateway_error, StarletteHTTPException: http_error, Exception: unexpected}
    direct = {("POST", base + path): endpoint for method, path, endpoint in ROUTES for base in bases
              if method == "POST" and "{" not in path}
    return GatewayApp(direct=direct, routes=routes, lifespan=lifespan, exception_handlers=handlers)


class GatewayApp(Starlette):
    """Starlette, with the POST routes of fixed paths (the model endpoints: nearly all traffic) dispatched by
    one dict lookup, skipping the two middleware layers and the router's scan of route patterns; their
    refusals and unexpected errors end the same way as through Starlette's handlers above."""

    def __init__(self, *, direct: dict[tuple[str, str], Endpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(scope, receive, send)
        finally:
            if BODY_BYTES in scope:  # the request's body leaves the process's budget with the request
                self.state.gateway.bodies.release(scope)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.direct.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if endpoint is None or scope.get("root_path"):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except GatewayError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            response = error_response(GatewayError("internal_error", "The gateway hit an unexpected error."))
        await response(scope, receive, send)
