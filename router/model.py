"""What the gateway knows about one model: the catalog's entry type."""

from __future__ import annotations

import msgspec


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint: a model as one provider serves it. Endpoints of the same weights share ``canonical``."""

    id: str  # "provider/model"
    name: str
    provider: str
    upstream_id: str
    context_length: int | None = None
    max_output_tokens: int | None = None
    prompt_price: str = "0"  # USD per token, as a decimal string
    completion_price: str = "0"
    # Prompt-cache rates (USD per token); None means the provider lists none: cached input costs the prompt rate.
    cache_read_price: str | None = None
    cache_write_price: str | None = None
    modality: str = "chat"  # chat | embedding | transcription
    capabilities: frozenset[str] = frozenset()  # tools | vision | json
    free: bool = False
    tier: str = "balanced"  # free | balanced | frontier
    aliases: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()  # other model ids to try when this one fails
    listed: bool = True  # False for pass-through ids made up on the fly
    created: int = 0
    deprecated: bool = False  # the seller still serves it but says it is going away; auto-* skips it
    audio_hour_price: str | None = None  # USD per hour of audio, for transcription priced by time
    image_input_price: str | None = None  # USD per input image token (image edits); None: the prompt rate
    # Where the prices come from: "genai-prices:<their provider id>" (the seller's own list price),
    # "estimate:<their provider id>" (another seller's price for the same weights), "config", or "".
    pricing_source: str = ""
    # False for listings we cannot know are served (a local server runs whatever the operator loaded):
    # they resolve and route when asked for by id, but auto-* never picks them.
    auto: bool = True
    # The model's canonical id, ``author/model`` as OpenRouter spells it (router/canonical.py); "" = ``id``.
    canonical: str = ""
    # Metadata from the models.dev dataset (router/metadata.py), where it knows the model.
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("text",)
    supported_parameters: tuple[str, ...] = ()
    family: str | None = None
    quantization: str | None = None  # fp8, bf16, … where the seller's id says so

    @property
    def slug(self) -> str:
        """The canonical id (the endpoint's own id for a model only one provider serves)."""
        return self.canonical or self.id
