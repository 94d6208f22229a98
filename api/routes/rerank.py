"""``POST /rerank``: a query and documents, ranked by relevance; Cohere's shape, as OpenRouter and LiteLLM
take it (``model``, ``query``, ``documents``, ``top_n``, ``return_documents`` →
``results[{index, relevance_score, document}]``).

Documents are strings or ``{"text": …}`` objects; an empty list, an empty text or more documents than the
model takes is a 400 naming the field before any upstream call. Admission reserves the dearest the
request can be: search units for all the documents (Cohere), or every character as a token (priced per
token: no tokenizer makes more tokens than characters of text).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from common.errors import GatewayError, invalid
from common.wire import RerankRequest, Route
from router.catalog import Catalog
from router.media import rerank_spec, search_units


async def create_rerank(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "rerank")
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, rerank = await read_json(request, RerankRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = rerank.model
        texts = document_texts(rerank.documents)
        plan = endpoint_plan(gateway, rerank.model, modality="rerank", capability="rerank")
        model = gateway.catalog.get(plan[0].model) or gateway.catalog.resolve(rerank.model)
        most = rerank_spec(model).max_documents
        if len(texts) > most:
            raise invalid(f"'documents' has {len(texts)} items; {model.id} ranks at most {most}.", param="documents")
        await dispatch.admit(plan, request={"max_tokens": 1},
                             extra_cost=worst_case(gateway.catalog, plan, rerank.query, texts), with_enqueue=True)
    except GatewayError as error:
        return await dispatch.refuse(error)
    return await dispatch.answer(dispatch.job("rerank", plan, body=body))


def document_texts(documents: list[str | dict[str, Any]]) -> list[str]:
    """Each document's text; refuses an empty list, an empty text or an object without ``text``."""
    if not documents:
        raise invalid("'documents' must not be empty.", param="documents")
    texts = []
    for i, document in enumerate(documents):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str) or not text:
            raise invalid("Each document must be a non-empty string or an object with a non-empty 'text'.",
                          param=f"documents[{i}]")
        texts.append(text)
    return texts


def worst_case(catalog: Catalog, plan: list[Route], query: str, texts: list[str]) -> Decimal:
    characters = (len(query) + 1) * len(texts) + sum(len(t) for t in texts)  # the query goes with each pair
    worst = Decimal(0)
    for route in plan:
        model = catalog.get(route.model)
        if model is None or model.free:
            continue
        unit = rerank_spec(model).per_search_unit
        cost = unit * search_units(len(texts)) if unit is not None else Decimal(model.prompt_price) * characters
        worst = max(worst, cost)
    return worst


ROUTES = [("POST", "/rerank", create_rerank)]
