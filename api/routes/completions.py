"""``POST /completions``: OpenAI's legacy text completions, what editor autocomplete sends.

``prompt`` (a string, strings, token ids or token arrays) and ``suffix`` (fill-in-the-middle: the code
after the cursor) go to a provider that serves ``/completions`` (its registry capability
``completions``): the completion-only models (``gpt-3.5-turbo-instruct``, ``davinci-002``) and, at a
provider whose every model takes it (``completions:any``: vLLM, Ollama, Together, Fireworks…), its chat
models too, and Codestral at Mistral's fill-in-the-middle endpoint (quirks ``completions_*``). The body
travels as the client sent it; the worker stamps model, provider and cost on the answer.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from common.errors import GatewayError, invalid
from common.wire import CompletionRequest, Route
from router.plan import plan_for
from router.providers import Provider

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions: what an uncapped request may generate there
MAX_PROMPTS = 2048


async def create_completion(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "completions")
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, completion = await read_json(request, CompletionRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = completion.model
        text = prompt_text(completion.prompt)
        check_request(completion)
        plan = completion_plan(gateway, completion.model)
        await dispatch.admit(plan, messages=[{"role": "user", "content": text + (completion.suffix or "")}],
                             request=output_request(completion), with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    stream = bool(completion.stream)
    include_usage = bool(stream and completion.stream_options and completion.stream_options.include_usage)
    return await dispatch.answer(dispatch.job("completion", plan, body=body, stream=stream,
                                              include_usage=include_usage))


def prompt_text(prompt: str | list[Any]) -> str:
    """The prompt as text, for admission's estimate; refuses an empty or mixed prompt (param ``prompt``).

    Token ids count as four characters each, the estimate's own rate."""
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise invalid("'prompt' must not be an empty array.", param="prompt")
    if len(prompt) > MAX_PROMPTS:
        raise invalid(f"'prompt' has {len(prompt)} items; at most {MAX_PROMPTS} are allowed.", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return "".join(prompt)
    if all(isinstance(p, int) for p in prompt):
        return "xxxx" * len(prompt)
    if all(isinstance(p, list) and p for p in prompt):
        return "xxxx" * sum(len(p) for p in prompt)
    raise invalid("'prompt' must be a string, strings, token ids, or non-empty token arrays.", param="prompt")


def check_request(completion: CompletionRequest) -> None:
    """OpenAI's own refusals of field combinations, before any upstream is called."""
    n, best_of = completion.n or 1, completion.best_of
    if best_of is not None and best_of < n:
        raise invalid("'best_of' must be greater than or equal to 'n'.", param="best_of")
    if completion.stream and best_of is not None and best_of > 1:
        raise invalid("'best_of' cannot be greater than 1 when streaming.", param="best_of")
    if completion.echo and completion.suffix is not None:
        raise invalid("'echo' cannot be used with 'suffix'.", param="echo")


def output_request(completion: CompletionRequest) -> dict[str, Any]:
    """The fields the output plan reads, for admission's worst case (16 tokens when uncapped, as OpenAI)."""
    cap = completion.max_tokens if completion.max_tokens is not None else DEFAULT_MAX_TOKENS
    return {"max_tokens": max(1, cap), "n": completion.n, "best_of": completion.best_of}


def completion_plan(gateway: Gateway, model_id: str) -> list[Route]:
    """A completion-only model's endpoints, or a chat model's endpoints at providers serving ``/completions``."""
    model = gateway.catalog.resolve(model_id)
    if model.modality != "chat" or not model.listed:
        return endpoint_plan(gateway, model_id, modality="completion", capability="completions")
    plan = [route for route in plan_for(gateway.catalog, model_id, healthy=gateway.health.healthy)
            if completes(gateway.catalog.providers[route.provider], route.upstream_model)]
    if not plan:
        raise invalid(f"The model {model_id!r} has no /completions endpoint at any configured provider; use "
                      "/chat/completions, or a provider that serves /completions (vLLM, Ollama, Together, "
                      "Fireworks…; Codestral at Mistral).", param="model")
    return plan


def completes(provider: Provider, upstream_model: str) -> bool:
    """Whether ``provider`` serves /completions for this chat model: all of them (``completions:any``), or
    those its ``completions_models`` quirk names (Mistral's fill-in-the-middle: Codestral)."""
    if "completions:any" in provider.capabilities:
        return True
    pattern = provider.quirks.get("completions_models")
    return "completions" in provider.capabilities and bool(pattern and re.search(pattern, upstream_model))


ROUTES = [("POST", "/completions", create_completion)]
