"""The Azure OpenAI adapter against a fake Azure server that checks what real Azure checks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.settings import Settings
from router.providers import resolve_providers
from tests.fakes.server import ThreadedServer
from workers.providers.azure import AzureAdapter
from workers.providers.base import RequestSpec, Upstream

KEY = "azure-test-key"
DEPLOYMENT = "gpt-4o-prod"
VERSION = "2024-10-21"


def _refusal(request: Request) -> JSONResponse | None:
    if request.headers.get("api-key") != KEY:
        return JSONResponse({"error": {"code": "401", "message": "Access denied due to invalid subscription key."}},
                            status_code=401)
    if "authorization" in request.headers:
        return JSONResponse({"error": {"message": "unexpected authorization header"}}, status_code=400)
    return None


def _completion(model: str) -> dict:
    return {
        "id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi from azure"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }


async def deployment_chat(request: Request) -> JSONResponse:
    if (refused := _refusal(request)) is not None:
        return refused
    if request.query_params.get("api-version") != request.app.state.version:
        return JSONResponse({"error": {"code": "404", "message": "Resource not found"}}, status_code=404)
    if request.path_params["deployment"] != DEPLOYMENT:
        return JSONResponse({"error": {"code": "DeploymentNotFound", "message": "no such deployment"}},
                            status_code=404)
    body = await request.json()
    assert body["messages"][0]["content"] == "hello"
    return JSONResponse(_completion("gpt-4o-2024-08-06"))


async def deployment_embeddings(request: Request) -> JSONResponse:
    if (refused := _refusal(request)) is not None:
        return refused
    if request.query_params.get("api-version") != VERSION or request.path_params["deployment"] != "embed-small":
        return JSONResponse({"error": {"message": "Resource not found"}}, status_code=404)
    data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
    return JSONResponse({"object": "list", "model": "text-embedding-3-small", "data": data,
                         "usage": {"prompt_tokens": 1, "total_tokens": 1}})


async def v1_chat(request: Request) -> JSONResponse:
    if (refused := _refusal(request)) is not None:
        return refused
    if "api-version" in request.query_params:
        return JSONResponse({"error": {"message": "api-version is not allowed on /openai/v1"}}, status_code=400)
    body = await request.json()
    if body.get("model") != DEPLOYMENT:
        return JSONResponse({"error": {"code": "DeploymentNotFound", "message": "no such model"}}, status_code=404)
    return JSONResponse(_completion(body["model"]))


app = Starlette(routes=[
    Route("/openai/deployments/{deployment}/chat/completions", deployment_chat, methods=["POST"]),
    Route("/openai/deployments/{deployment}/embeddings", deployment_embeddings, methods=["POST"]),
    Route("/openai/v1/chat/completions", v1_chat, methods=["POST"]),
])
app.state.version = VERSION


@pytest.fixture(scope="module")
def azure() -> Iterator[str]:
    with ThreadedServer(app) as server:
        yield server.url


def send(spec: RequestSpec) -> httpx.Response:
    return httpx.request(spec.method, spec.url, headers=spec.headers, content=spec.content, json=spec.json,
                         timeout=10)


def upstream(base_url: str, key: str = KEY, api_version: str | None = None) -> Upstream:
    return Upstream(provider="azure", kind="azure", base_url=base_url, api_key=key, auth="api-key",
                    api_version=api_version)


BODY = {"messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": 20}


def test_classic_deployment_shape(azure: str) -> None:
    adapter = AzureAdapter()
    spec = adapter.chat_request(upstream(azure), DEPLOYMENT, dict(BODY), stream=False)
    assert spec.url == f"{azure}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={VERSION}"
    assert spec.headers["api-key"] == KEY
    response = send(spec)
    assert response.status_code == 200, response.text
    assert adapter.chat_response(response.json())["choices"][0]["message"]["content"] == "hi from azure"


def test_wrong_deployment_and_wrong_key_are_classified(azure: str) -> None:
    adapter = AzureAdapter()
    missing = send(adapter.chat_request(upstream(azure), "nope", dict(BODY), stream=False))
    assert missing.status_code == 404
    assert adapter.error(404, {}, missing.content).error_type == "model_not_found"
    denied = send(adapter.chat_request(upstream(azure, key="wrong"), DEPLOYMENT, dict(BODY), stream=False))
    assert denied.status_code == 401
    err = adapter.error(401, {}, denied.content)
    assert not err.retryable and err.fallback and "subscription key" in err.message


def test_api_version_from_the_provider_and_a_trailing_openai_segment(azure: str) -> None:
    app.state.version = "2025-01-01-preview"
    try:
        spec = AzureAdapter().chat_request(upstream(azure + "/openai/", api_version="2025-01-01-preview"),
                                           DEPLOYMENT, dict(BODY), stream=False)
        assert send(spec).status_code == 200
    finally:
        app.state.version = VERSION


def test_v1_api_shape(azure: str) -> None:
    adapter = AzureAdapter()
    spec = adapter.chat_request(upstream(f"{azure}/openai/v1", api_version=VERSION), DEPLOYMENT, dict(BODY),
                                stream=False)
    assert spec.url == f"{azure}/openai/v1/chat/completions"
    response = send(spec)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == DEPLOYMENT


def test_embeddings_and_transcription_urls(azure: str) -> None:
    adapter = AzureAdapter()
    up = upstream(azure)
    url = adapter.embeddings_url(up, "embed-small")
    assert url == f"{azure}/openai/deployments/embed-small/embeddings?api-version={VERSION}"
    response = httpx.post(url, headers={"api-key": KEY}, json={"input": "x"}, timeout=10)
    assert response.status_code == 200 and response.json()["data"][0]["embedding"] == [0.1, 0.2]
    assert adapter.transcription_url(up, "whisper") == \
        f"{azure}/openai/deployments/whisper/audio/transcriptions?api-version={VERSION}"
    assert adapter.transcription_url(upstream(f"{azure}/openai/v1/"), "whisper") == \
        f"{azure}/openai/v1/audio/transcriptions"


def test_streaming_request_keeps_usage_and_the_header() -> None:
    spec = AzureAdapter().chat_request(upstream("https://res.openai.azure.com"), DEPLOYMENT, dict(BODY),
                                       stream=True)
    assert spec.headers["accept"] == "text/event-stream" and spec.headers["api-key"] == KEY
    assert b'"include_usage":true' in spec.content
    assert b'"max_completion_tokens":20' in spec.content  # Azure accepts it; no rename


def test_registry_resolution_reaches_the_fake(azure: str) -> None:
    env = {"AZURE_OPENAI_API_KEY": KEY, "AZURE_OPENAI_ENDPOINT": azure}
    provider = resolve_providers(Settings(env=env))["azure"]
    assert provider.configured
    up = Upstream(provider=provider.id, kind=provider.kind, base_url=provider.base_url, api_key=provider.api_key,
                  auth=provider.auth, api_version=provider.api_version, headers=provider.headers,
                  quirks=provider.quirks)
    response = send(AzureAdapter().chat_request(up, DEPLOYMENT, dict(BODY), stream=False))
    assert response.status_code == 200, response.text


def test_reasoning_object_becomes_reasoning_effort(azure: str) -> None:
    """Azure's o-series take OpenAI's flat reasoning_effort; the canonical object and details never go out."""
    body = {"messages": [{"role": "user", "content": "hello"},
                         {"role": "assistant", "content": "ok", "reasoning_details": [{"type": "reasoning.text"}]},
                         {"role": "user", "content": "again"}], "reasoning": {"max_tokens": 20000}}
    spec = AzureAdapter().chat_request(upstream(azure), DEPLOYMENT, body, stream=False)
    sent = json.loads(spec.content or b"{}")
    assert sent["reasoning_effort"] == "high" and "reasoning" not in sent
    assert all("reasoning_details" not in m for m in sent["messages"])
    assert send(spec).status_code == 200
