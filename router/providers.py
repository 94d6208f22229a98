"""The provider registry: data, not code per provider.

Each entry says how to reach a provider (kind of protocol, default base URL, key variables, auth header)
and what it serves. A provider is *configured* on a deployment when its key or its base URL is in the
environment (local servers: only their base URL), or when the config file declares it.

Environment convention, for a provider id ``x-y``: ``X_Y_API_KEY``, ``X_Y_BASE_URL``, ``X_Y_API_VERSION``,
plus the well-known names other tools use (``key_env``, ``base_url_env``, ``api_version_env``). A base URL
may hold ``{ENV_VAR}`` placeholders (Cloudflare's account id, Azure's resource name) filled from the
environment at resolve time; a provider whose URL still has a hole is not configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from common.settings import ProviderConfig, Settings


class ProviderSpec(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    kind: str = "openai"  # openai | anthropic | gemini | azure
    base_url: str  # may contain {ENV_VAR} placeholders
    key_env: tuple[str, ...] = ()  # first one set wins (after <ID>_API_KEY); empty = no key needed
    auth: str = "bearer"  # bearer | x-api-key | api-key | x-goog-api-key | none | <header name>
    # chat | embeddings | transcription | completions | completions:any (legacy /completions: TEXT below) |
    # images | speech | moderations | rerank
    capabilities: frozenset[str] = frozenset({"chat"})
    quirks: dict[str, Any] = {}
    local: bool = False  # a server on the operator's machine: enabled by its base URL, key optional
    api_version: str | None = None
    base_url_env: tuple[str, ...] = ()  # alternative base URL variables, after <ID>_BASE_URL
    api_version_env: tuple[str, ...] = ()  # alternative API version variables, after <ID>_API_VERSION


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """A provider as this deployment sees it. ``api_key`` is the only place a key ever lives."""

    id: str
    name: str
    kind: str
    base_url: str
    api_key: str | None
    auth: str
    capabilities: frozenset[str]
    quirks: dict[str, Any]
    configured: bool
    api_version: str | None = None
    headers: dict[str, str] = {}
    needs: tuple[str, ...] = ()  # environment variables its base URL still waits for
    local: bool = False  # the operator's own server: its unlisted model ids route, with nothing to bill
    # "deny": the provider's terms say API prompts are neither trained on nor kept (OpenRouter's
    # ``provider.data_collection: "deny"`` keeps only these); "unknown" otherwise.
    data_collection: str = "unknown"

    def __repr__(self) -> str:
        # Providers end up in logs and tracebacks; the key must not.
        key = "set" if self.api_key else "none"
        return f"Provider(id={self.id!r}, kind={self.kind!r}, base_url={self.base_url!r}, api_key={key}, " \
               f"configured={self.configured})"

    def public(self) -> dict[str, Any]:
        """What may be shown to clients and operators (``GET /providers``, ``megabrain providers``): no key."""
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "configured": self.configured,
            "capabilities": sorted(self.capabilities), "needs": list(self.needs),
        }


def _env_prefix(provider_id: str) -> str:
    return provider_id.upper().replace("-", "_").replace(".", "_")


ALL = frozenset({"chat", "embeddings", "transcription"})
# Added to a set: the provider serves OpenAI's legacy /completions for its completion models (``completions``),
# and for every model it serves, chat models included (``completions:any``: vLLM, Ollama, Together…).
TEXT = frozenset({"completions"})
TEXT_ANY = frozenset({"completions", "completions:any"})
# Quirks of a provider whose /completions is Mistral's fill-in-the-middle endpoint: only the chat models
# matching ``completions_models`` take it, at ``completions_path``, answering in chat completions' shape.
FIM = {"completions_path": "fim/completions", "completions_models": "codestral", "completions_shape": "chat"}
IMAGES = frozenset({"images"})  # POST /images/generations
SPEECH = frozenset({"speech"})  # POST /audio/speech
MODERATIONS = frozenset({"moderations"})  # POST /moderations
RERANK = frozenset({"rerank"})  # POST /rerank (Cohere's shape; quirks rerank_path, rerank_top_field)
CAPABILITIES = ALL | TEXT_ANY | IMAGES | SPEECH | MODERATIONS | RERANK  # every capability an entry may name
CHAT_EMBED = frozenset({"chat", "embeddings"})
CHAT_STT = frozenset({"chat", "transcription"})
CHAT = frozenset({"chat"})


def _compat(
    id: str, name: str, base_url: str, *key_env: str, caps: frozenset[str] = CHAT, **quirks: Any
) -> ProviderSpec:
    """An OpenAI-compatible cloud provider.

    ``max_tokens_field`` is on by default: OpenAI's newer ``max_completion_tokens`` is rejected or ignored by
    many compatible servers, while ``max_tokens`` is accepted by all of them.
    """
    auth = quirks.pop("auth", "bearer")
    return ProviderSpec(
        id=id, name=name, base_url=base_url, key_env=key_env, auth=auth, capabilities=caps,
        quirks={"max_tokens_field": "max_tokens", **quirks},
    )


def _local(id: str, name: str, base_url: str, *key_env: str, caps: frozenset[str] = CHAT) -> ProviderSpec:
    """A server on the operator's machine: enabled only when ``<ID>_BASE_URL`` is set; a key is optional."""
    return ProviderSpec(
        id=id, name=name, base_url=base_url, key_env=key_env, capabilities=caps, local=True,
        quirks={"max_tokens_field": "max_tokens"},
    )


# Sources: /work/shared/reference/provider-formats.md §5 unless noted. Capabilities list only confirmed
# endpoints at OpenAI paths under the same base URL.
REGISTRY: tuple[ProviderSpec, ...] = (
    # Native or special protocols.
    ProviderSpec(id="openai", name="OpenAI", base_url="https://api.openai.com/v1", key_env=("OPENAI_API_KEY",),
                 capabilities=ALL | TEXT | IMAGES | SPEECH | MODERATIONS),
    ProviderSpec(id="azure", name="Azure OpenAI", kind="azure",
                 base_url="https://{AZURE_RESOURCE_NAME}.openai.azure.com",
                 key_env=("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"), auth="api-key", capabilities=ALL | TEXT,
                 api_version="2024-10-21", base_url_env=("AZURE_OPENAI_ENDPOINT",),
                 api_version_env=("OPENAI_API_VERSION",)),
    ProviderSpec(id="anthropic", name="Anthropic", kind="anthropic", base_url="https://api.anthropic.com",
                 key_env=("ANTHROPIC_API_KEY",), auth="x-api-key"),
    ProviderSpec(id="google", name="Google Gemini", kind="gemini",
                 base_url="https://generativelanguage.googleapis.com",
                 key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENERATIVE_AI_API_KEY"),
                 auth="x-goog-api-key", capabilities=CHAT_EMBED | IMAGES,
                 quirks={"env_prefix": "GEMINI"}),
    # OpenAI-compatible clouds.
    _compat("groq", "Groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", caps=CHAT_STT),
    _compat("together", "Together AI", "https://api.together.xyz/v1",
            "TOGETHER_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_API_KEY", caps=ALL | TEXT_ANY | RERANK),
    # Fireworks serves Whisper from separate audio hosts, so not "transcription" under this base.
    _compat("fireworks", "Fireworks AI", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY",
            caps=CHAT_EMBED | TEXT_ANY),
    # LiteLLM flattens content arrays for DeepSeek ("does not support content in list format").
    _compat("deepseek", "DeepSeek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", flatten_content=True),
    # Mistral answers 422 to stream_options (cline#939, llxprt-code#114).
    # Fill-in-the-middle for Codestral models at /fim/completions, chat-shaped answers (``FIM`` below).
    _compat("mistral", "Mistral AI", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", caps=ALL | TEXT,
            no_stream_options=True, **FIM),
    _compat("codestral", "Codestral", "https://codestral.mistral.ai/v1", "CODESTRAL_API_KEY", caps=CHAT | TEXT,
            no_stream_options=True, **FIM),
    _compat("xai", "xAI", "https://api.x.ai/v1", "XAI_API_KEY", caps=CHAT | IMAGES),
    # Perplexity chat has no /v1; its embeddings live at /v1/embeddings, outside this base, so not listed.
    _compat("perplexity", "Perplexity", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
    _compat("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", caps=CHAT_EMBED,
            reasoning_object=True),
    _compat("cerebras", "Cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
    _compat("deepinfra", "DeepInfra", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY",
            caps=CHAT_EMBED),
    _compat("sambanova", "SambaNova", "https://api.sambanova.ai/v1", "SAMBANOVA_API_KEY"),
    _compat("nebius", "Nebius Token Factory", "https://api.tokenfactory.nebius.com/v1", "NEBIUS_API_KEY"),
    _compat("hyperbolic", "Hyperbolic", "https://api.hyperbolic.xyz/v1", "HYPERBOLIC_API_KEY"),
    _compat("novita", "Novita AI", "https://api.novita.ai/openai", "NOVITA_API_KEY"),
    _compat("moonshot", "Moonshot AI (Kimi)", "https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"),
    _compat("zhipu", "Zhipu AI (BigModel)", "https://open.bigmodel.cn/api/paas/v4",
            "ZHIPU_API_KEY", "ZHIPUAI_API_KEY"),
    _compat("zai", "Z.ai", "https://api.z.ai/api/paas/v4", "ZAI_API_KEY"),
    _compat("alibaba", "Alibaba Qwen (DashScope)", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "ALIBABA_API_KEY", "DASHSCOPE_API_KEY"),
    # Rerank is Cohere's own v2 API on the same host, outside the compatibility base.
    _compat("cohere", "Cohere", "https://api.cohere.ai/compatibility/v1", "COHERE_API_KEY", "CO_API_KEY",
            caps=CHAT_EMBED | RERANK, rerank_path="/v2/rerank"),
    _compat("llama", "Meta Llama API", "https://api.llama.com/compat/v1", "LLAMA_API_KEY"),
    _compat("nvidia", "NVIDIA NIM", "https://integrate.api.nvidia.com/v1", "NVIDIA_API_KEY", "NVIDIA_NIM_API_KEY"),
    _compat("github", "GitHub Models", "https://models.github.ai/inference", "GITHUB_TOKEN"),
    _compat("huggingface", "Hugging Face Inference Providers", "https://router.huggingface.co/v1",
            "HF_TOKEN", "HUGGINGFACE_API_KEY"),
    _compat("ai21", "AI21 Labs", "https://api.ai21.com/studio/v1", "AI21_API_KEY"),
    _compat("baseten", "Baseten", "https://inference.baseten.co/v1", "BASETEN_API_KEY", caps=CHAT_EMBED),
    _compat("friendli", "Friendli", "https://api.friendli.ai/serverless/v1", "FRIENDLI_TOKEN"),
    _compat("siliconflow", "SiliconFlow", "https://api.siliconflow.com/v1", "SILICONFLOW_API_KEY"),
    _compat("volcengine", "Volcengine Ark", "https://ark.cn-beijing.volces.com/api/v3",
            "VOLCENGINE_API_KEY", "ARK_API_KEY"),
    _compat("byteplus", "BytePlus ModelArk", "https://ark.ap-southeast.bytepluses.com/api/v3", "BYTEPLUS_API_KEY"),
    _compat("scaleway", "Scaleway Generative APIs", "https://api.scaleway.ai/v1",
            "SCALEWAY_API_KEY", "SCW_SECRET_KEY"),
    _compat("ovhcloud", "OVHcloud AI Endpoints", "https://oai.endpoints.kepler.ai.cloud.ovh.net/v1",
            "OVHCLOUD_API_KEY"),
    # Upstage's console shows https://api.upstage.ai/v1 (older docs: /v1/solar).
    _compat("upstage", "Upstage", "https://api.upstage.ai/v1", "UPSTAGE_API_KEY"),
    _compat("cloudflare", "Cloudflare Workers AI",
            "https://api.cloudflare.com/client/v4/accounts/{CLOUDFLARE_ACCOUNT_ID}/ai/v1",
            "CLOUDFLARE_API_KEY", "CLOUDFLARE_API_TOKEN"),
    # Databricks rejects stream_options for some served models (opencode#4698).
    _compat("databricks", "Databricks", "https://{DATABRICKS_HOST}/serving-endpoints", "DATABRICKS_TOKEN",
            no_stream_options=True),
    _compat("snowflake", "Snowflake Cortex", "https://{SNOWFLAKE_ACCOUNT}.snowflakecomputing.com/api/v2/cortex/v1",
            "SNOWFLAKE_CORTEX_PAT"),
    _compat("venice", "Venice AI", "https://api.venice.ai/api/v1", "VENICE_API_KEY", "VENICE_AI_API_KEY",
            caps=CHAT_STT),
    _compat("chutes", "Chutes", "https://llm.chutes.ai/v1", "CHUTES_API_KEY"),
    _compat("requesty", "Requesty", "https://router.requesty.ai/v1", "REQUESTY_API_KEY"),
    _compat("helicone", "Helicone AI Gateway", "https://ai-gateway.helicone.ai/v1", "HELICONE_API_KEY"),
    _compat("vercel", "Vercel AI Gateway", "https://ai-gateway.vercel.sh/v1", "AI_GATEWAY_API_KEY"),
    _compat("poe", "Poe", "https://api.poe.com/v1", "POE_API_KEY"),
    _compat("modelscope", "ModelScope", "https://api-inference.modelscope.cn/v1", "MODELSCOPE_API_KEY"),
    _compat("stepfun", "StepFun", "https://api.stepfun.com/v1", "STEPFUN_API_KEY"),
    _compat("xiaomi", "Xiaomi MiMo", "https://api.xiaomimimo.com/v1", "XIAOMI_API_KEY", "XIAOMI_MIMO_API_KEY"),
    _compat("inception", "Inception Labs", "https://api.inceptionlabs.ai/v1", "INCEPTION_API_KEY"),
    _compat("sarvam", "Sarvam AI", "https://api.sarvam.ai/v1", "SARVAM_API_KEY", auth="api-subscription-key"),
    _compat("wandb", "W&B Inference", "https://api.inference.wandb.ai/v1", "WANDB_API_KEY"),
    _compat("digitalocean", "DigitalOcean Gradient", "https://inference.do-ai.run/v1",
            "DIGITALOCEAN_API_KEY", "DIGITALOCEAN_ACCESS_TOKEN"),
    _compat("vultr", "Vultr Inference", "https://api.vultrinference.com/v1", "VULTR_API_KEY"),
    # docs.lambda.ai announces the Lambda Inference API is being sunset; kept for existing keys.
    _compat("lambda", "Lambda", "https://api.lambda.ai/v1", "LAMBDA_API_KEY"),
    _compat("featherless", "Featherless AI", "https://api.featherless.ai/v1", "FEATHERLESS_API_KEY"),
    _compat("nscale", "Nscale", "https://inference.api.nscale.com/v1", "NSCALE_API_KEY"),
    # Morph rejects content-part arrays with a 500 (neurolink's catalog notes).
    _compat("morph", "Morph", "https://api.morphllm.com/v1", "MORPH_API_KEY", flatten_content=True),
    # Priced directly by genai-prices (router/catalog.py SOURCES).
    _compat("minimax", "MiniMax", "https://api.minimax.io/v1", "MINIMAX_API_KEY"),
    _compat("avian", "Avian", "https://api.avian.io/v1", "AVIAN_API_KEY"),
    _compat("voyage", "Voyage AI", "https://api.voyageai.com/v1", "VOYAGE_API_KEY",
            caps=frozenset({"embeddings"}) | RERANK, rerank_top_field="top_k"),
    _compat("jina", "Jina AI", "https://api.jina.ai/v1", "JINA_API_KEY", caps=frozenset({"embeddings"}) | RERANK),
    # Servers on the operator's machine.
    _local("ollama", "Ollama", "http://localhost:11434/v1", "OLLAMA_API_KEY", caps=CHAT_EMBED | TEXT_ANY),
    _local("vllm", "vLLM", "http://localhost:8000/v1", "VLLM_API_KEY", caps=ALL | TEXT_ANY),
    _local("lmstudio", "LM Studio", "http://localhost:1234/v1", "LMSTUDIO_API_KEY", caps=CHAT_EMBED | TEXT_ANY),
    _local("llamacpp", "llama.cpp server", "http://localhost:8080/v1", "LLAMACPP_API_KEY",
           caps=CHAT_EMBED | TEXT_ANY),
    _local("jan", "Jan", "http://localhost:1337/v1", "JAN_API_KEY"),
)

# Providers whose API terms say prompts are not used for training (their published data policies, as
# OpenRouter's provider list records them). Local servers never send prompts anywhere.
NO_TRAINING = frozenset({
    "openai", "azure", "anthropic", "vertex", "bedrock", "groq", "together", "fireworks", "deepinfra",
    "cerebras",
})

_KIND_AUTH = {"anthropic": "x-api-key", "gemini": "x-goog-api-key", "azure": "api-key"}
_PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def fill_placeholders(url: str, env: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """``{ENV_VAR}`` holes in ``url`` filled from ``env``; returns the URL and the variables still missing.

    A value placed right after ``://`` loses its own scheme, so ``DATABRICKS_HOST=https://x.cloud.databricks.com``
    and ``DATABRICKS_HOST=x.cloud.databricks.com`` both work.
    """
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        value = (env.get(match.group(1)) or "").strip()
        if not value:
            missing.append(match.group(1))
            return match.group(0)
        if url[: match.start()].endswith("://"):
            value = value.split("://", 1)[-1]
        return value.strip("/")

    return _PLACEHOLDER.sub(fill, url), tuple(missing)


def resolve_providers(settings: Settings, registry: tuple[ProviderSpec, ...] = REGISTRY) -> dict[str, Provider]:
    """Registry + environment + config file → every provider this deployment knows, keyed by id."""
    env: Mapping[str, str] = settings.env
    providers: dict[str, Provider] = {}
    for spec in registry:
        providers[spec.id] = _resolve(spec, env, settings.providers.get(spec.id))
    for pid, cfg in settings.providers.items():
        if pid not in providers:
            providers[pid] = _resolve(_spec_from_config(pid, cfg), env, cfg)
    return providers


def _spec_from_config(pid: str, cfg: ProviderConfig) -> ProviderSpec:
    """A provider only the config file knows: without a key variable it is treated as a local server."""
    return ProviderSpec(
        id=pid, name=cfg.name or pid, kind=cfg.kind, base_url=cfg.base_url or "",
        key_env=(cfg.api_key_env,) if cfg.api_key_env else (), auth=_KIND_AUTH.get(cfg.kind, "bearer"),
        capabilities=frozenset(cfg.capabilities), quirks=cfg.quirks, local=not cfg.api_key_env,
    )


def _first_env(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)


def _resolve(spec: ProviderSpec, env: Mapping[str, str], cfg: ProviderConfig | None) -> Provider:
    prefix = spec.quirks.get("env_prefix") or _env_prefix(spec.id)
    key_vars = (f"{prefix}_API_KEY", *spec.key_env)
    if cfg and cfg.api_key_env:
        key_vars = (cfg.api_key_env, *key_vars)
    api_key = (cfg.api_key if cfg else None) or _first_env(env, key_vars)
    base_from_env = _first_env(env, (f"{prefix}_BASE_URL", *spec.base_url_env))
    from_config = cfg is not None and cfg.base_url is not None
    base_url, needs = fill_placeholders(
        base_from_env or (cfg.base_url if cfg and cfg.base_url else None) or spec.base_url, env
    )
    if spec.local:
        configured = bool(base_from_env) or from_config
    else:
        # A key, or an explicitly set base URL (an OpenAI-compatible server that needs no key), enables it.
        configured = bool(api_key or base_from_env) or from_config
    if cfg is not None and cfg.enabled is not None:
        configured = cfg.enabled
    api_version = (cfg.api_version if cfg and cfg.api_version else None) or _first_env(
        env, (f"{prefix}_API_VERSION", *spec.api_version_env)
    )
    return Provider(
        id=spec.id,
        name=(cfg.name if cfg and cfg.name else spec.name),
        kind=(cfg.kind if cfg and cfg.kind != "openai" else spec.kind),
        base_url=base_url,
        api_key=api_key,
        auth=spec.auth,
        capabilities=frozenset(cfg.capabilities) | spec.capabilities if cfg else spec.capabilities,
        quirks={**spec.quirks, **(cfg.quirks if cfg else {})},
        configured=configured and not needs,  # a URL with a hole cannot be reached
        api_version=api_version or spec.api_version,
        headers=dict(cfg.headers) if cfg else {},
        needs=needs,
        local=spec.local,
        data_collection="deny" if spec.local or spec.id in NO_TRAINING else "unknown",
    )
