"""What every model endpoint does after validation: admit, build the job, enqueue it, answer from events.

Chat, embeddings and transcriptions differ only in how they validate and plan; from the plan on, they
share this path, so a change to admission, queueing or cancellation is made once.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec
from starlette.requests import Request
from redis.exceptions import RedisError
from starlette.responses import Response, StreamingResponse

from api.access.check import AccessCheck, Caller
from api.access.admission import Admission, admitted, caller_of, counted_refusal, prepare
from api.exchange.exchange import Exchange
from api.formats import WireFormat
from api.formats.anthropic_messages import AnthropicMessages
from api.formats.chat_completions import CHAT_COMPLETIONS, ChatCompletions
from api.gateway import Gateway
from api.access.worst_case import worst_case_cost
from api.exchange.ids import client_request_id
from api.exchange import background
from api.exchange.answer import KEEPALIVE, SSE_HEADERS, json_response, refusal, stream_response
from common import tracing
from common.errors import GatewayError, unavailable
from common.names import new_request_id
from common.wire import Event, Job, KeepEvents, Route
from router.auto import estimate_prompt_tokens
from router.shaping import choices


class Dispatch:
    """One model request on its way to the pools: its exchange, response headers, admission and format.

    Created first thing in a route, so that every way the request ends, refusals included, goes through
    its exchange's one finish.
    """

    def __init__(self, gateway: Gateway, request: Request, route_name: str,
                 fmt: WireFormat = CHAT_COMPLETIONS, *, key_in_query: bool = False) -> None:
        self.gateway = gateway
        self.request = request
        self.format = fmt
        self.key_in_query = key_in_query  # Gemini's ``?key=``: the key may come in the query string
        request_id = new_request_id()
        self.client_request_id = client_request_id(request)
        self.exchange = Exchange(gateway, route_name, request_id, self.client_request_id)
        self.exchange.span = tracing.start_request(request.headers, route_name, request_id)
        self.headers = {"x-request-id": self.client_request_id or request_id}
        # from arrival: the job's deadline, and with it when its reservation's hold ends (common/settlement.py)
        self.deadline = time.time() + gateway.settings.request_timeout
        self.admission = Admission()
        self.caller: Caller | None = None  # identify()
        self.limits_ran = False  # the request's limit script ran (it counted the request, or refused it)
        self.pending: AccessCheck | None = None  # admit(with_enqueue=True): run by the first enqueue

    @property
    def request_id(self) -> str:
        return self.exchange.request_id

    async def identify(self) -> Caller:
        """Who calls, first thing, before the body is read or planned: refuses (``GatewayError``) an unknown
        key, a keyless caller without a client address, and a caller this process saw use up its limit
        for the current window (no Redis call for that; ``api/access/check.py``)."""
        if self.caller is None:
            self.caller = await caller_of(self.gateway, self.request, query_key=self.key_in_query)
        if self.caller.error is not None:
            raise self.caller.error
        return self.caller

    async def admit(self, plan: list[Route], *, messages: list[Any] | None = None,
                    tools: list[Any] | None = None, request: Mapping[str, Any] | None = None,
                    extra_cost: Decimal | None = None, with_enqueue: bool = False,
                    prompt_tokens: int | None = None, cost_bound: Callable[[], Decimal] | None = None) -> None:
        """Refuses (``GatewayError``) unless the caller may use this plan and the queue is reachable.

        The request's worst-case cost (its canonical ``messages``/``tools``, and the output its canonical
        ``request`` can make each candidate generate, from the output plan the worker sends: cap, thinking
        budget, ``n``; at the dearest candidate; computed only when a budget applies) is reserved against the
        key's budget, and the job carries it to be settled; ``extra_cost`` is what else the request can add
        (server tools billed per use, at most); ``prompt_tokens`` a bound of the prompt the route knows,
        instead of the estimate from ``messages`` (embeddings: at most one token per byte of the body); ``cost_bound``
        the route's own worst case instead of all that (transcriptions: from the upload's size). A free
        plan answers one choice per request: the free allowance counts requests, so ``n`` > 1 there is refused.

        ``with_enqueue``: the limits are checked and counted by the job's first enqueue, in the same Redis
        round trip (``answer``; a refusal comes from there). The route must then answer with a job.
        """
        gateway = self.gateway
        self.exchange.model = plan[0].model if plan else self.exchange.model
        asked = request or {}
        free = plan_is_free(gateway, plan)
        if free and choices(asked) > 1:
            raise GatewayError("invalid_request", "Free models answer one choice per request: send n (or "
                               "best_of) of 1, or use a paid model with an API key.", param="n")

        def worst_case() -> Decimal:
            if cost_bound is not None:
                return cost_bound()
            prompt = prompt_tokens if prompt_tokens is not None else estimate_prompt_tokens(messages or [], tools)
            worst = worst_case_cost(gateway.catalog, plan, prompt, asked, gateway.settings.default_max_tokens)
            return worst + extra_cost if extra_cost else worst

        check = await prepare(gateway, await self.identify(), model_is_free=free, worst_case=worst_case,
                              request_id=self.request_id, deadline=self.deadline)
        if not self.gateway.relay.ready.is_set():  # before the check runs: a refused request holds nothing
            raise unavailable("The gateway cannot reach its queue (Redis) right now.", retry_after=2)
        if with_enqueue:
            self.pending = check
            self.admission = Admission(key_id=check.record.id if check.record else None,
                                       account=check.record.owner if check.record else None,
                                       reserved=check.reserve, credit_reserved=check.credit_reserve)
        else:
            result = await check.run()
            self.limits_ran = True
            self.admission = admitted(result)
            self.headers.update(self.admission.headers)

    def job(self, kind: str, plan: list[Route], *, meta: dict[str, Any] | None = None, **fields: Any) -> Job:
        meta = dict(meta or {})
        if self.admission.key_id:
            meta["key_id"] = self.admission.key_id
        if self.admission.account:
            meta["account"] = self.admission.account
        if self.admission.reserved:
            fields["reserved"] = format(self.admission.reserved, "f")
        if self.admission.credit_reserved:  # the account's credits pay: the settlement charges them
            meta["credit"] = str(self.admission.credit_reserved)
        span = self.exchange.span
        if span is not None:
            tracing.planned(span, kind, self.exchange.model or (plan[0].model if plan else ""), plan,
                            self.admission.key_id)
            fields["trace"] = tracing.traceparent(span)
        return Job(
            kind=kind,  # type: ignore[arg-type]
            request_id=self.request_id,
            reply_channel=self.gateway.relay.channel,
            attempt=0,
            plan=plan,
            deadline=self.deadline,
            meta=meta,
            **fields,
        )

    async def refuse(self, error: GatewayError) -> Response:
        """The refusal in the route's format; the response finishes the exchange when sent.

        A request refused before its limit script ran (bad body, unknown model, paid model without a key,
        unknown key) is counted against the caller's own limits here, so refusals are limited like
        requests: past the limit the answer is the 429 (``api/access/admission.py``)."""
        ran = self.limits_ran or (self.pending is not None and self.pending.result is not None)
        if self.caller is not None and not ran:
            error = await counted_refusal(self.gateway, self.caller, error)
        return refusal(self.exchange, self.format, error, self.headers)

    async def answer(self, job: Job) -> Response:
        """Enqueue ``job`` and answer with its stream or its one result (or error). A stream whose client asked
        for it to be resumable (``x-megabrain-resumable: true``, with a key to own it) is detached."""
        if job.stream and self.admission.key_id and self.request.headers.get(RESUMABLE_HEADER, "") in ("1", "true"):
            rebuilt = isinstance(self.format, AnthropicMessages)  # its events rebuilt from the kept chat ones
            refused = await self.detach(job, rebuilt=rebuilt)
            return refused or self.replay(-1, self.format.stream() if rebuilt else None)
        try:
            await self.exchange.submit(job, admission=self.pending)
        except GatewayError as error:
            return await self.refuse(error)
        finally:
            if self.pending is not None and self.pending.result is not None:
                self.headers.update(self.pending.result.headers)
        answer = stream_response if job.stream else json_response
        return await answer(self.exchange, self.format, self.headers, gone=self.request.is_disconnected)


    async def detach(self, job: Job, before: Callable[[], Awaitable[None]] | None = None,
                     on_start: Callable[[], Awaitable[None]] | None = None,
                     on_cancel: Callable[[], Awaitable[None]] | None = None,
                     rebuilt: bool = False) -> Response | None:
        """Enqueue ``job`` (a stream) and follow its answer on its own, keeping its events
        (``api/exchange/background.py``): None once under way (``before`` ran), else the refusal.
        ``rebuilt``: its worker keeps the chat frames and readers rebuild the format's events from them
        (``background.Rebuilder``; a background Response's, whose stored record holds what that needs)."""
        assert self.admission.key_id, "a detached answer needs a key to own it"
        gateway = self.gateway
        if isinstance(self.format, ChatCompletions) or rebuilt:  # the worker keeps its (chat) events
            job = msgspec.structs.replace(job, keep=KeepEvents(
                ttl=gateway.response_events.ttl, live_ttl=gateway.response_events.live_ttl,
                max_bytes=gateway.response_events.max_bytes))
        messages = rebuilt and isinstance(self.format, AnthropicMessages)
        owner = background.AnswerOwner(key_id=self.admission.key_id, account=self.admission.account,
                                       follower=gateway.relay.channel, keepalive=self._keepalive().decode(),
                                       worker_keeps=job.keep is not None, rebuild="messages" if messages else "",
                                       model=getattr(self.format, "model", None) or "")
        try:
            # the owner record before the job: a quick answer's settlement sets its retention (after its end)
            await gateway.response_events.claim(self.request_id, owner)
            try:
                await self.exchange.submit(job, admission=self.pending)
            except GatewayError:  # refused: there will be nothing to read
                await gateway.response_events.redis.delete(gateway.names.answer_owner(self.request_id))
                raise
            if before is not None:
                await before()
        except GatewayError as error:
            return await self.refuse(error)
        except RedisError:
            return await self.refuse(unavailable("The gateway cannot reach its store (Redis) right now.", 2))
        finally:
            if self.pending is not None and self.pending.result is not None:
                self.headers.update(self.pending.result.headers)
        encoder = self.format.stream()
        encode: Callable[[Event], bytes] = encoder.frames
        fail: Callable[[int, bytes], bytes] = encoder.error
        if rebuilt:  # it keeps chat's frames (the worker's, or its own failure as chat's error event);
            def keep_chat(event: Event) -> bytes:  # its encoder only makes the Response object to store
                encoder.frames(event)
                return event.data

            def keep_chat_error(status: int, envelope: bytes) -> bytes:
                encoder.error(status, envelope)
                return b"data: " + envelope + b"\n\n"  # chat's error event (workers/keeper.py)
            encode, fail = keep_chat, keep_chat_error
        background.start(gateway.background, background.follow(
            self.exchange, gateway.response_events.writer(self.request_id), encode, fail,
            on_start or _nothing, on_cancel or _nothing), name=f"detached-{self.request_id}")
        return None

    def replay(self, after: int, stream: Any = None) -> Response:
        """The detached answer's events after ``after``, live until its end (with the format's own filler:
        Google's SDKs fail on an SSE comment); ``stream``: the format's encoder, to rebuild them with."""
        return replay_response(self.gateway, self.request_id, after, self.headers, self._keepalive(), stream=stream)

    def _keepalive(self) -> bytes:
        keepalive: bytes = getattr(self.format.stream(), "keepalive", KEEPALIVE)
        return keepalive


RESUMABLE_HEADER = "x-megabrain-resumable"


async def _nothing() -> None:
    return None


def replay_response(gateway: Gateway, request_id: str, after: int, headers: dict[str, str],
                    keepalive: bytes = KEEPALIVE, follower: str = "", stream: Any = None) -> Response:
    """A detached answer's events after sequence number ``after`` (-1: all), from any web process
    (``follower``: the reply channel of the process following it, watched while nothing comes); ``stream``:
    its format's encoder, rebuilding its events from the chat ones its worker keeps (``background.rebuilt``)."""
    deadline = time.time() + gateway.settings.request_timeout + 60
    followed = functools.partial(background.followed, gateway.reply_redises, follower) if follower else None
    events = (background.rebuilt(gateway.response_events, request_id, after, deadline, stream, keepalive)
              if stream is not None else
              background.replay(gateway.response_events, request_id, after, deadline, keepalive, followed))
    return StreamingResponse(events,
                             media_type="text/event-stream",
                             headers={**SSE_HEADERS, **headers, "x-megabrain-answer-id": request_id})


def plan_reaches(gateway: Gateway, plan: list[Route], kind: str) -> bool:
    """Whether a candidate of the plan speaks protocol ``kind`` (``anthropic``: the only one an
    ``anthropic-beta`` header, a Messages body or a server tool reaches)."""
    return any(gateway.providers[route.provider].kind == kind for route in plan)


def plan_is_free(gateway: Gateway, plan: list[Route]) -> bool:
    """A request is free when every candidate is a free model (auto-free never falls back to paid ones)."""
    for route in plan:
        model = gateway.catalog.get(route.model)
        if model is None or not model.free:
            return False
    return True
