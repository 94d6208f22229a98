"""The provider registry as data, and how the environment and the config file turn it into providers."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from common.settings import Settings, load_settings
from router.providers import CAPABILITIES, REGISTRY, Provider, ProviderSpec, fill_placeholders, resolve_providers

SPECS = {spec.id: spec for spec in REGISTRY}


def resolve(env: dict[str, str]) -> dict[str, Provider]:
    return resolve_providers(Settings(env=env))


# --- the data ---------------------------------------------------------------------------------------


def test_registry_is_large_and_ids_are_unique_lowercase_prefixes() -> None:
    ids = [spec.id for spec in REGISTRY]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
    for pid in ids:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", pid), pid


@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.id)
def test_every_entry_is_well_formed(spec: ProviderSpec) -> None:
    filled, missing = fill_placeholders(spec.base_url, {v: "acct123" for v in re.findall(r"\{(\w+)\}", spec.base_url)})
    assert missing == ()
    url = urlparse(filled)
    assert url.scheme in ("http", "https") and url.hostname, spec.base_url
    assert "{" not in filled and " " not in filled
    assert spec.kind in ("openai", "anthropic", "gemini", "azure")
    assert spec.capabilities and spec.capabilities <= CAPABILITIES
    if spec.local:
        assert url.hostname == "localhost"
    else:
        assert spec.key_env, f"{spec.id} has no key variable"
        assert url.scheme == "https"
    for var in spec.key_env:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", var)


def test_known_entries() -> None:
    for pid in ("openai", "azure", "anthropic", "google", "together", "mistral", "openrouter", "cloudflare",
                "ollama", "vllm", "lmstudio", "llamacpp", "jan", "sarvam", "alibaba", "huggingface"):
        assert pid in SPECS, pid
    assert SPECS["anthropic"].kind == "anthropic" and SPECS["anthropic"].auth == "x-api-key"
    assert SPECS["google"].kind == "gemini"
    assert SPECS["azure"].kind == "azure" and SPECS["azure"].auth == "api-key"
    assert SPECS["sarvam"].auth == "api-subscription-key"
    assert SPECS["groq"].capabilities == {"chat", "transcription"}
    assert SPECS["openai"].capabilities == {"chat", "embeddings", "transcription", "completions", "images", "speech", "moderations"}
    assert SPECS["vllm"].capabilities >= {"completions", "completions:any"}  # its chat models complete too


def test_max_tokens_quirk_on_compatible_providers_but_not_openai_or_azure() -> None:
    for spec in REGISTRY:
        renames = spec.quirks.get("max_tokens_field") == "max_tokens"
        if spec.kind == "openai" and spec.id != "openai":
            assert renames, spec.id
        else:
            assert not renames, spec.id
    assert SPECS["mistral"].quirks.get("no_stream_options") is True
    assert not SPECS["together"].quirks.get("no_stream_options")


# --- resolution -------------------------------------------------------------------------------------


def test_nothing_is_configured_in_an_empty_environment() -> None:
    providers = resolve({})
    assert len(providers) == len(REGISTRY)
    assert [p.id for p in providers.values() if p.configured] == []
    assert all(p.api_key is None for p in providers.values())


def test_key_in_the_environment_configures_a_provider() -> None:
    providers = resolve({"TOGETHER_API_KEY": "tk", "HF_TOKEN": "hf"})
    assert providers["together"].configured and providers["together"].api_key == "tk"
    assert providers["together"].base_url == "https://api.together.xyz/v1"
    assert providers["huggingface"].configured and providers["huggingface"].api_key == "hf"
    assert not providers["groq"].configured


def test_conventional_key_variable_wins_over_aliases() -> None:
    providers = resolve({"TOGETHERAI_API_KEY": "alias", "TOGETHER_API_KEY": "main"})
    assert providers["together"].api_key == "main"
    providers = resolve({"DASHSCOPE_API_KEY": "ds"})
    assert providers["alibaba"].configured and providers["alibaba"].api_key == "ds"


def test_base_url_override_and_keyless_enablement() -> None:
    providers = resolve({"GROQ_BASE_URL": "http://127.0.0.1:9999/openai/v1"})
    assert providers["groq"].base_url == "http://127.0.0.1:9999/openai/v1"
    assert providers["groq"].configured and providers["groq"].api_key is None
    assert resolve({"GEMINI_BASE_URL": "http://127.0.0.1:1"})["google"].base_url == "http://127.0.0.1:1"


def test_local_provider_needs_its_base_url() -> None:
    assert not resolve({"OLLAMA_API_KEY": "x"})["ollama"].configured
    ollama = resolve({"OLLAMA_BASE_URL": "http://10.0.0.5:11434/v1"})["ollama"]
    assert ollama.configured and ollama.base_url == "http://10.0.0.5:11434/v1" and ollama.api_key is None
    vllm = resolve({"VLLM_BASE_URL": "http://gpu:8000/v1", "VLLM_API_KEY": "v"})["vllm"]
    assert vllm.configured and vllm.api_key == "v" and "transcription" in vllm.capabilities


def test_placeholders_are_filled_from_the_environment() -> None:
    waiting = resolve({"CLOUDFLARE_API_TOKEN": "cf"})["cloudflare"]
    assert not waiting.configured and waiting.needs == ("CLOUDFLARE_ACCOUNT_ID",)
    cf = resolve({"CLOUDFLARE_API_TOKEN": "cf", "CLOUDFLARE_ACCOUNT_ID": "abc123"})["cloudflare"]
    assert cf.configured and cf.needs == ()
    assert cf.base_url == "https://api.cloudflare.com/client/v4/accounts/abc123/ai/v1"
    db = resolve({"DATABRICKS_TOKEN": "d", "DATABRICKS_HOST": "https://dbc-1.cloud.databricks.com/"})["databricks"]
    assert db.configured and db.base_url == "https://dbc-1.cloud.databricks.com/serving-endpoints"


def test_fill_placeholders_reports_every_missing_variable() -> None:
    url, missing = fill_placeholders("https://{A}.x/{B}/v1", {"B": "bee"})
    assert url == "https://{A}.x/bee/v1" and missing == ("A",)


def test_azure_resolution_from_its_well_known_variables() -> None:
    azure = resolve({"AZURE_OPENAI_API_KEY": "az", "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/",
                     "OPENAI_API_VERSION": "2025-01-01-preview"})["azure"]
    assert azure.configured and azure.kind == "azure" and azure.auth == "api-key"
    assert azure.base_url == "https://res.openai.azure.com/" and azure.api_version == "2025-01-01-preview"
    by_name = resolve({"AZURE_API_KEY": "az", "AZURE_RESOURCE_NAME": "myres"})["azure"]
    assert by_name.configured and by_name.base_url == "https://myres.openai.azure.com"
    assert by_name.api_version == "2024-10-21"
    assert not resolve({"AZURE_API_KEY": "az"})["azure"].configured  # nowhere to send it


def test_keys_never_show_in_repr_or_public_view() -> None:
    provider = resolve({"OPENAI_API_KEY": "sk-secret-value"})["openai"]
    assert provider.api_key == "sk-secret-value"
    assert "sk-secret-value" not in repr(provider) and "sk-secret-value" not in str(provider.public())


def test_config_file_provider(tmp_path) -> None:
    config = tmp_path / "megabrain.toml"
    config.write_text(
        '[providers.local]\nkind = "openai"\nbase_url = "http://127.0.0.1:9100/v1"\napi_key_env = "LOCAL_API_KEY"\n'
        '[providers.corp]\nkind = "azure"\nbase_url = "https://corp.openai.azure.com"\napi_key_env = "CORP_KEY"\n'
        '[providers.groq]\nenabled = false\n'
    )
    settings = load_settings(env={"LOCAL_API_KEY": "lk", "CORP_KEY": "ck", "GROQ_API_KEY": "g"},
                             config_path=str(config))
    providers = resolve_providers(settings)
    local = providers["local"]
    assert local.configured and local.kind == "openai" and local.api_key == "lk"
    assert local.base_url == "http://127.0.0.1:9100/v1" and local.auth == "bearer"
    corp = providers["corp"]
    assert corp.kind == "azure" and corp.auth == "api-key" and corp.api_key == "ck"
    assert not providers["groq"].configured  # the file can switch a keyed provider off
