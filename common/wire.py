"""Wire types shared by the web tier and the worker pools.

Client-facing request bodies are validated with msgspec; job payloads and events travel through Redis as
msgpack. Nothing read from Redis is ever unpickled: a payload that does not decode into these Structs is
rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# ---------------------------------------------------------------------------------------------------------
# Client request bodies (validation only: the original JSON is kept and forwarded, so unknown fields pass
# through to OpenAI-compatible upstreams).


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class FunctionDef(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.:-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct):
    type: str
    function: FunctionDef | None = None


class Message(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None  # an assistant turn's reasoning text, as the gateway returned it
    reasoning_details: list[dict[str, Any]] | None = None  # its typed reasoning (signatures), sent back intact


class MaxPrice(msgspec.Struct, forbid_unknown_fields=True):
    """OpenRouter's ``provider.max_price``: USD per million tokens."""

    prompt: Annotated[float, msgspec.Meta(ge=0)] | None = None
    completion: Annotated[float, msgspec.Meta(ge=0)] | None = None


ProviderName = Annotated[str, msgspec.Meta(min_length=1)]


class ProviderPreferences(msgspec.Struct, forbid_unknown_fields=True):
    """OpenRouter's ``provider`` object: which endpoints of a model may serve, in which order.

    Unknown fields are refused rather than ignored: a preference the gateway does not honour must not
    look honoured."""

    order: list[ProviderName] | None = None
    only: list[ProviderName] | None = None
    ignore: list[ProviderName] | None = None
    allow_fallbacks: bool = True
    sort: Literal["price", "throughput", "latency"] | None = None
    require_parameters: bool = False
    max_price: MaxPrice | None = None
    data_collection: Literal["allow", "deny"] = "allow"
    quantizations: list[ProviderName] | None = None


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]  # echoed in errors and logs: bounded


class Reasoning(msgspec.Struct):
    """OpenRouter's ``reasoning`` object; adapters translate it per provider (workers/providers/reasoning.py)."""

    effort: str | None = None
    max_tokens: PositiveInt | None = None
    exclude: bool | None = None
    enabled: bool | None = None


class ChatRequest(msgspec.Struct):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: ModelId | None = None  # or ``models`` alone
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None  # vLLM-style servers generate this many
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    thinking: dict[str, Any] | None = None  # Anthropic's own form, taken for Claude models
    models: list[ModelId] | None = None  # OpenRouter-style client fallback list
    provider: ProviderPreferences | None = None
    # Read in this one decode because they may change the price (router/forwarding.py refuse_priced).
    service_tier: str | None = None
    plugins: list[Any] | None = None
    web_search_options: dict[str, Any] | None = None

    def priced(self) -> dict[str, Any]:
        return {"service_tier": self.service_tier, "plugins": self.plugins,
                "web_search_options": self.web_search_options}


# ---------------------------------------------------------------------------------------------------------
# Queue payloads and events (msgpack).


class Route(msgspec.Struct, array_like=True, frozen=True):
    """One candidate of a request's plan: which provider pool serves which model."""

    provider: str  # provider id, also the pool/queue name
    model: str  # public model id reported to the client, e.g. "openai/gpt-4o-mini"
    upstream_model: str  # the id the provider's API expects


class Native(msgspec.Struct, kw_only=True):
    """A client request in a provider's own protocol, sent as-is (model and max_tokens aside) when the
    serving provider speaks it: no lossy round trip through the canonical (chat-completions) shape.

    ``body`` is still the canonical request, for every other candidate of the plan.
    """

    protocol: Literal["anthropic_messages", "gemini_generate"]
    body: bytes
    headers: dict[str, str] = {}  # protocol headers to forward (anthropic-beta)


# Gemini thought signatures the gateway issues itself carry another provider's reasoning (api/formats/
# gemini_generate.py); they start with these bytes, so a Gemini upstream is never sent one (workers/native_gemini.py).
GEMINI_SIGNATURE_MAGIC = b"mbgw1:"


class KeepEvents(msgspec.Struct, kw_only=True):
    """A detached chat completions stream's (and a background Response's) events are kept by its worker, in the same Lua call as their
    PUBLISH (``workers/keeper.py``), its final event by the settlement that bills it: the answer survives
    the web process that admitted it. Chat's encoding is the identity, so the worker's frames are the
    client's events (``api/exchange/background.py`` reads them)."""

    ttl: int  # seconds the events stay after the answer's end
    live_ttl: int  # ... from the first one, while it runs
    max_bytes: int  # the most one answer keeps (then a ``cut`` marker)


class Job(msgspec.Struct, kw_only=True):
    """One request, as a worker receives it. ``hop`` indexes ``plan``; fallbacks re-enqueue with hop+1."""

    kind: Literal["chat", "embeddings", "transcription", "count_tokens", "completion", "image", "speech",
                  "rerank", "moderation"]
    request_id: str
    reply_channel: str
    attempt: int  # bumped by the web tier when it re-runs a request itself (worker death)
    hop: int = 0
    plan: list[Route]
    deadline: float  # epoch seconds; no retry or fallback starts after it
    stream: bool = False
    include_usage: bool = False
    body: bytes = b""  # the client's validated JSON body, forwarded as-is where the upstream speaks OpenAI
    blob_key: str | None = None  # for uploads (transcriptions): the Redis key holding the bytes
    anthropic_beta: str | None = None  # the client's ``anthropic-beta`` header, forwarded to Anthropic
    reserved: str = ""  # USD held against the key's budget at admission (decimal string), settled on usage
    enqueued_at: float = 0.0  # epoch seconds of the latest enqueue: the worker reports the queue wait
    seq: int = 0  # the last event seq of the request so far: a handed-over job continues after it
    native: Native | None = None  # the client's own request, for a provider that speaks its protocol
    meta: dict[str, Any] = {}  # route-specific job data (key id, upload fields), never protocol state
    trace: str | None = None  # the request span's W3C traceparent when tracing is on (common/tracing.py)
    keep: "KeepEvents | None" = None  # a resumable chat stream: the worker keeps its events (see KeepEvents)


EventKind = Literal[
    "start",  # a worker picked the job up (carries ``hello``)
    "heartbeat",  # the worker is alive, nothing to say yet
    "data",  # stream frames
    "result",  # the one answer of a non-streaming request
    "done",  # the closing frames of a stream
    "error",  # the request failed: an error envelope in ``data``
    "handoff",  # the job moved to the next candidate's pool (carries ``handoff``)
    "abandoned",  # the worker is shutting down without finishing the job
    "relay_lost",  # made up by the web process itself: its subscription dropped, events may be lost
    "part",  # a piece of the next event's data: data above EVENT_PART_BYTES travels in pieces
    "overflow",  # made up by the web process itself: the client reads too slowly, its events were dropped
    "cancel",  # a web process asks the one following a background answer to stop it (api/exchange/background.py)
]
# No single PUBLISH carries more than this of an event's data (plus its small envelope): a large answer (a
# 42 MB embeddings result) travels as "part" events the relay joins, never as one message that would break
# the web process's subscription (Redis closes a subscriber whose output buffer passes its pub/sub limit).
EVENT_PART_BYTES = 512 * 1024
FINAL_KINDS = frozenset({"result", "done", "error"})
# Events that say only "alive": they take no sequence number, so losing one (a relay that resubscribed) leaves
# no gap in a request's sequence, and a gap always means a lost event that mattered.
UNSEQUENCED_KINDS = frozenset({"start", "heartbeat"})


class Hello(msgspec.Struct, array_like=True):
    """Who picked the job up; rides on the first event a worker sends for it."""

    worker: str
    provider: str
    queued_ms: float | None  # enqueue → pickup, on the worker's clock
    sent_at: float  # epoch seconds, for the relay's lag metric


class Handoff(msgspec.Struct, array_like=True):
    """Where a job went after its provider failed before its first token."""

    pool: str
    hop: int
    job_id: str


class Event(msgspec.Struct, array_like=True, omit_defaults=True):
    """What a worker tells the web tier about one request.

    ``attempt`` and ``seq`` let the relay drop events of stale attempts and duplicates, so a re-run job can
    never interleave tokens into a request that moved on.
    """

    request_id: str
    attempt: int
    seq: int
    kind: EventKind
    data: bytes = b""  # SSE frames ("data"/"done"), a JSON body ("result"), or an error envelope ("error")
    status: int = 200
    hello: Hello | None = None
    handoff: Handoff | None = None
    usage: dict[str, Any] | None = None  # canonical usage of the answer ("result"/"done")
    retry_after: float | None = None  # seconds, for an "error"
    content_type: str | None = None  # of a "result" that is not JSON (plain-text transcriptions)
    native: bool = False  # ``data`` is already in the client's protocol (``Job.native``), not canonical
    kept: bool = False  # the worker kept this event's frames itself (``KeepEvents``): the web tier does not


job_encoder = msgspec.msgpack.Encoder()
job_decoder = msgspec.msgpack.Decoder(Job)
event_encoder = msgspec.msgpack.Encoder()
event_decoder = msgspec.msgpack.Decoder(Event)


# ---------------------------------------------------------------------------------------------------------
# Embeddings request body (validation only, like ChatRequest: the original JSON is what travels on).

# msgspec allows one array type per union, so token arrays and string lists share one list type; the
# route checks that a list is all strings, all tokens or all token arrays.
EmbeddingInput = str | list[str | int | list[int]]


class EmbeddingRequest(msgspec.Struct):
    model: ModelId
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Legacy text completions (``POST /completions``): editor autocomplete sends ``prompt`` + ``suffix``.

# One array type per union (as for embeddings): the route checks a list is all strings, all token ids or
# all token arrays.
CompletionPrompt = str | list[str | int | list[int]]


class CompletionRequest(msgspec.Struct):
    model: ModelId
    prompt: CompletionPrompt
    suffix: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    echo: bool | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Image generation (``POST /images/generations``): what each model takes is ``router/media.py``'s data.


class ImageRequest(msgspec.Struct):
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=32000)]
    model: ModelId
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    size: str | None = None
    quality: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    style: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    moderation: Literal["low", "auto"] | None = None
    user: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Speech (``POST /audio/speech``): text to audio bytes; voices per model are ``router/media.py``'s data.


class SpeechRequest(msgspec.Struct):
    model: ModelId
    input: Annotated[str, msgspec.Meta(min_length=1)]
    voice: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, msgspec.Meta(ge=0.25, le=4.0)] | None = None
    instructions: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    stream_format: Literal["audio", "sse"] | None = None


# ---------------------------------------------------------------------------------------------------------
# Moderation (``POST /moderations``): text, texts, or omni models' text and image parts.


class ModerationRequest(msgspec.Struct):
    input: str | list[str | dict[str, Any]]
    model: ModelId = "omni-moderation-latest"


# ---------------------------------------------------------------------------------------------------------
# Rerank (``POST /rerank``), in Cohere's shape as OpenRouter and LiteLLM take it.


class RerankRequest(msgspec.Struct):
    model: ModelId
    query: Annotated[str, msgspec.Meta(min_length=1)]
    documents: list[str | dict[str, Any]]
    top_n: PositiveInt | None = None
    return_documents: bool = False
