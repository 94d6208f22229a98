"""Azure OpenAI: the OpenAI wire format at Azure's URLs.

Two URL shapes exist. The classic one puts the deployment name (our upstream model id) in the path and
needs an ``api-version`` query parameter: ``{endpoint}/openai/deployments/{deployment}/chat/completions
?api-version=2024-10-21``. The v1 API (base URL ending in ``/openai/v1``) is plain OpenAI: ``{base}/chat/
completions`` with the model in the body and no version. The key goes in an ``api-key`` header (the
registry sets ``auth="api-key"``; ``auth="bearer"`` sends an Entra token instead). Bodies, streams and
errors are OpenAI's, so everything else is inherited.
"""

from __future__ import annotations

from urllib.parse import urlencode

from workers.providers.base import Upstream, path_segment
from workers.providers.openai_compat import OpenAICompatAdapter, join_url

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane version when this was written


def is_v1_api(base_url: str) -> bool:
    return "/openai/v1" in base_url.rstrip("/") + "/"


def endpoint_root(base_url: str) -> str:
    """The resource endpoint, tolerating a base URL given with a trailing ``/openai``."""
    root = base_url.rstrip("/")
    return root[: -len("/openai")] if root.endswith("/openai") else root


class AzureAdapter(OpenAICompatAdapter):
    def url(self, up: Upstream, path: str, model: str) -> str:
        if is_v1_api(up.base_url):
            return join_url(up.base_url, path)
        deployment = path_segment(model, "deployment")
        query = urlencode({"api-version": up.api_version or DEFAULT_API_VERSION})
        return f"{endpoint_root(up.base_url)}/openai/deployments/{deployment}/{path.lstrip('/')}?{query}"

    def embeddings_url(self, up: Upstream, model: str) -> str:
        return self.url(up, "embeddings", model)

    def transcription_url(self, up: Upstream, model: str) -> str:
        return self.url(up, "audio/transcriptions", model)
