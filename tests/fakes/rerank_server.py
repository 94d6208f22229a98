"""Fake rerank upstreams as strict as the real ones: Cohere's v2 API, Jina's and Voyage's (one app).

Cohere (``POST /v2/rerank``): ``model``, ``query``, ``documents`` (strings only), ``top_n``,
``max_tokens_per_doc``; anything else is Cohere's 400 (``return_documents`` is gone from v2). Its answer
has ``results[{index, relevance_score}]`` and ``meta.billed_units.search_units``. Jina (``POST
/v1/rerank``): strings or ``{"text"}`` objects, ``top_n``, ``return_documents``; its answer has
``usage.total_tokens``. Voyage (``POST /voyage/v1/rerank``): strings, ``top_k`` (not ``top_n``),
``return_documents``, ``truncation``; results under ``data``. All refuse an empty ``documents`` and want
their key as a bearer token.
Relevance is deterministic: the share of the query's words found in the document.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

COHERE_FIELDS = {"model", "query", "documents", "top_n", "max_tokens_per_doc"}
JINA_FIELDS = {"model", "query", "documents", "top_n", "return_documents"}
VOYAGE_FIELDS = {"model", "query", "documents", "top_k", "return_documents", "truncation"}


@dataclass
class RerankFakeState:
    api_key: str = "rerank-key"
    failures: list[int] = field(default_factory=list)  # statuses answered first, one per request
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def relevance(query: str, document: str) -> float:
    words = set(query.lower().split())
    found = words & set(document.lower().replace(".", " ").split())
    return round(len(found) / max(1, len(words)), 4)


def create_rerank_app(state: RerankFakeState) -> Starlette:
    async def rerank(request: Request) -> JSONResponse:
        cohere = request.url.path.startswith("/v2/")
        voyage = request.url.path.startswith("/voyage/")
        body = await request.json()
        with state._lock:
            state.requests.append({"path": request.url.path, "body": body,
                                   "key_ok": request.headers.get("authorization") == f"Bearer {state.api_key}"})
            failure = state.failures.pop(0) if state.failures else None
        if request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"message": "invalid api token"}, status_code=401)
        if failure is not None:
            return JSONResponse({"message": "internal error"}, status_code=failure)
        unknown = set(body) - (COHERE_FIELDS if cohere else VOYAGE_FIELDS if voyage else JINA_FIELDS)
        if unknown:
            return JSONResponse({"message": f"invalid request: unknown field {sorted(unknown)[0]}"}, status_code=400)
        documents = body.get("documents")
        if not isinstance(documents, list) or not documents:
            return JSONResponse({"message": "invalid request: documents must not be empty"}, status_code=400)
        texts = []
        for document in documents:
            if isinstance(document, dict) and not (cohere or voyage):
                document = document.get("text")
            if not isinstance(document, str):
                return JSONResponse({"message": "invalid request: documents must be strings"}, status_code=400)
            texts.append(document)
        query = body.get("query")
        if not isinstance(query, str) or not query:
            return JSONResponse({"message": "invalid request: query must not be empty"}, status_code=400)
        results = sorted(({"index": i, "relevance_score": relevance(query, t)} for i, t in enumerate(texts)),
                         key=lambda r: (-r["relevance_score"], r["index"]))
        top_n = body.get("top_k" if voyage else "top_n")
        if top_n is not None:
            if not isinstance(top_n, int) or top_n < 1:
                return JSONResponse({"message": "invalid request: top_n must be positive"}, status_code=400)
            results = results[:top_n]
        if cohere:
            return JSONResponse({"id": "cohere-fake", "results": results,
                                 "meta": {"api_version": {"version": "2"},
                                          "billed_units": {"search_units": -(-len(texts) // 100)}}})
        if voyage:
            tokens = sum(len(query.split()) + len(t.split()) for t in texts)
            return JSONResponse({"object": "list", "data": results, "model": body.get("model"),
                                 "usage": {"total_tokens": tokens}})
        if body.get("return_documents", True):
            for result in results:
                result["document"] = {"text": texts[result["index"]]}
        tokens = sum(len(query.split()) + len(t.split()) for t in texts)
        return JSONResponse({"model": body.get("model"), "usage": {"total_tokens": tokens}, "results": results})

    return Starlette(routes=[Route("/v2/rerank", rerank, methods=["POST"]),
                             Route("/v1/rerank", rerank, methods=["POST"]),
                             Route("/voyage/v1/rerank", rerank, methods=["POST"])])
