"""Provider adapters, one module each, chosen by the provider's protocol kind."""

from __future__ import annotations

from workers.providers.anthropic import AnthropicAdapter
from workers.providers.azure import AzureAdapter
from workers.providers.base import Adapter
from workers.providers.gemini import GeminiAdapter
from workers.providers.openai_compat import OpenAICompatAdapter

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAICompatAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "azure": AzureAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"no adapter for provider kind {kind!r}") from None
