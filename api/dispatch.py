"""What every model endpoint does after validation: admit, build the job, enqueue it, answer from events.

Chat, embeddings and transcriptions differ only in how they validate and plan; from the plan on, they
share this path, so a change to admission, queueing or cancellation is made once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.admission import Admission, admit
from api.exchange import Exchange
from api.gateway import Gateway
from api.ids import client_request_id
from api.responses import error_response, json_response, stream_response
from common.errors import GatewayError, unavailable
from common.names import new_request_id
from common.usage import release_now
from common.wire import Job, Route

class Dispatch:
    """One model request on its way to the pools: its id, response headers and admission."""

    def __init__(self, gateway: Gateway, request: Request, route_name: str) -> None:
        self.gateway = gateway
        self.request = request
        self.route_name = route_name
        self.request_id = new_request_id()
        self.client_request_id = client_request_id(request)
        self.headers = {"x-request-id": self.client_request_id or self.request_id}
        self.admission = Admission()

    async def admit(self, plan: list[Route], worst_case: Callable[[], Decimal] | None = None) -> None:
        """Refuses (``GatewayError``) unless the caller may use this plan and the queue is reachable.

        ``worst_case`` (USD, computed only when a budget applies) is reserved against the key's budget;
        the job carries it to be settled.
        """
        self.admission = await admit(self.gateway, self.request, model_is_free=plan_is_free(self.gateway, plan),
                                     worst_case=worst_case)
        self.headers.update(self.admission.headers)
        if not self.gateway.relay.ready.is_set():
            raise unavailable("The gateway cannot reach its queue (Redis) right now.", retry_after=2)

    def job(self, kind: str, plan: list[Route], *, meta: dict[str, Any] | None = None, **fields: Any) -> Job:
        meta = dict(meta or {})
        if self.admission.key_id:
            meta["key_id"] = self.admission.key_id
        if self.admission.reserved:
            fields["reserved"] = format(self.admission.reserved, "f")
        return Job(
            kind=kind,  # type: ignore[arg-type]
            request_id=self.request_id,
            reply_channel=self.gateway.relay.channel,
            attempt=0,
            plan=plan,
            deadline=time.time() + self.gateway.settings.request_timeout,
            meta=meta,
            **fields,
        )

    async def release(self, job: Job) -> None:
        """Give back the budget reservation of a job no worker will see (its expiry covers Redis trouble)."""
        if job.reserved and self.admission.key_id:
            try:
                await release_now(self.gateway.redis, self.gateway.names, self.admission.key_id, job.reserved)
            except Exception:
                pass

    def refuse(self, error: GatewayError) -> Response:
        return error_response(error, self.headers)

    async def answer(self, job: Job) -> Response:
        """Enqueue ``job`` and answer with its stream or its one result (or error)."""
        gateway = self.gateway
        exchange = Exchange(gateway, job, gateway.relay.open(job.request_id))
        exchange.route_name = self.route_name
        exchange.client_request_id = self.client_request_id
        try:
            await exchange.submit()
        except GatewayError as error:
            gateway.relay.close(job.request_id)
            await self.release(job)
            return self.refuse(error)
        except Exception:
            gateway.relay.close(job.request_id)
            return self.refuse(unavailable("The gateway cannot reach its queue (Redis) right now."))

        def release() -> None:
            gateway.relay.close(job.request_id)

        answer = stream_response if job.stream else json_response
        return await answer(exchange, self.headers, release, gone=self.request.is_disconnected)


def plan_is_free(gateway: Gateway, plan: list[Route]) -> bool:
    """A request is free when every candidate is a free model (auto-free never falls back to paid ones)."""
    for route in plan:
        model = gateway.catalog.get(route.model)
        if model is None or not model.free:
            return False
    return True
